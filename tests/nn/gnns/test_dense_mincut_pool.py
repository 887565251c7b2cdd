"""dense_mincut_pool on the edge list against a plain dense computation of the same formulas; masking; no NaN."""

from __future__ import annotations

import torch

from milsdk.nn.adjacency import edge_list_from_adj
from milsdk.nn.gnns import dense_mincut_pool


def dense_reference(x, A, s, mask, temp=1.0):
    """The min-cut pooling equations with dense matrices (padded nodes: no mass, no edges)."""
    m = mask.float().unsqueeze(-1)
    A = A * m * m.transpose(1, 2)
    S = torch.softmax(s / temp, -1) * m
    x = x * m
    out = S.transpose(1, 2) @ x
    out_adj = S.transpose(1, 2) @ A @ S
    D = torch.diag_embed(A.sum(-1))
    num = torch.diagonal(out_adj, dim1=1, dim2=2).sum(-1)
    den = torch.diagonal(S.transpose(1, 2) @ D @ S, dim1=1, dim2=2).sum(-1)
    mincut = (-(num / den)).mean()
    ss = S.transpose(1, 2) @ S
    eye = torch.eye(s.shape[-1])
    ortho = torch.linalg.matrix_norm(ss / torch.linalg.matrix_norm(ss, keepdim=True) - eye / eye.norm()).mean()
    out_adj = out_adj * (1 - eye)
    d = out_adj.sum(-1).sqrt().unsqueeze(1) + 1e-15
    return out, out_adj / d / d.transpose(1, 2), mincut, ortho


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B, N, D, K = 3, 7, 4, 3
    A = torch.rand(B, N, N, generator=g) * (torch.rand(B, N, N, generator=g) < 0.5)
    A = A + A.transpose(1, 2)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 3:] = False
    return torch.randn(B, N, D, generator=g), A, torch.randn(B, N, K, generator=g), mask


def test_matches_the_dense_computation():
    x, A, s, mask = inputs()
    edge_index, edge_weight = edge_list_from_adj(A)
    expected = dense_reference(x, A, s, mask, temp=0.7)
    for got in (dense_mincut_pool(x, A, s, mask, temp=0.7),
                dense_mincut_pool(x, A.to_sparse(), s, mask.to(torch.uint8), temp=0.7),
                dense_mincut_pool(x, None, s, mask, 0.7, edge_index, edge_weight)):
        assert got[0].shape == (3, 3, 4) and got[1].shape == (3, 3, 3) and got[2].dim() == got[3].dim() == 0
        for a, b in zip(got, expected):
            assert torch.allclose(a, b, atol=1e-5)


def test_a_bags_pooling_ignores_its_padding():
    x, A, s, mask = inputs()
    n = int(mask[2].sum())
    alone = dense_mincut_pool(x[2:, :n], A[2:, :n, :n], s[2:, :n])
    x_pad = x[2:].clone()
    x_pad[:, n:] = 1e3  # padded values must not leak
    A_pad = torch.ones_like(A[2:])  # padded nodes linked to everything: the mask must drop those edges
    A_pad[:, :n, :n] = A[2:, :n, :n]
    padded = dense_mincut_pool(x_pad, A_pad, s[2:], mask[2:])
    for a, b in zip(alone, padded):
        assert torch.allclose(a, b, atol=1e-5)


def test_graph_without_edges_and_empty_bag_are_finite_with_finite_gradients():
    x = torch.randn(2, 5, 4)
    s = torch.randn(2, 5, 3, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.uint8)
    out = dense_mincut_pool(x, torch.zeros(2, 5, 5), s, mask)
    assert all(torch.isfinite(t).all() for t in out)
    assert float(out[2].detach()) == 0.0
    sum(t.sum() for t in out).backward()
    assert torch.isfinite(s.grad).all()


def test_one_graph_without_batch_axis():
    x, A, s, mask = inputs()
    got = dense_mincut_pool(x[0], A[0], s[0])
    expected = dense_mincut_pool(x[:1], A[:1], s[:1])
    for a, b in zip(got, expected):
        assert torch.allclose(a, b)


def test_trace_and_diag_helpers_of_the_reference_module():
    from milsdk.nn.gnns.dense_mincut_pool import diag, trace

    x = torch.arange(18.0).reshape(2, 3, 3)
    assert torch.equal(trace(x), torch.tensor([0.0 + 4 + 8, 9.0 + 13 + 17]))
    v = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    assert torch.equal(diag(v), torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [0.0, -1.0]]]))
    assert torch.equal(trace(diag(v)), v.sum(1))
