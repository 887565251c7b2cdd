"""CAMILSelfAttention: shapes, a hand case, a dense (N x N) reference computation, masking, dense / sparse adj =
edge list, TorchScript. (Equality with torchmil's block: tests/compat/test_torchmil_parity.py.)"""

from __future__ import annotations

import math

import pytest
import torch

from milsdk.nn.adjacency import edge_list_from_adj
from milsdk.nn.attention import CAMILSelfAttention

JIT_DEPRECATED = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"


def random_adj(B: int = 3, N: int = 7, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    adj = torch.rand(B, N, N, generator=g) * (torch.rand(B, N, N, generator=g) < 0.4)
    adj[:, 2, :] = 0  # node 2 has no outgoing edge
    return adj


def dense_reference(block: CAMILSelfAttention, X: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
    """The plain way, as torchmil writes it: w = rowsum(Q K^T * A) / sqrt(d), softmax over the bag, times V."""
    q, k = block.qk(X).chunk(2, dim=-1)
    w = (q @ k.transpose(1, 2) * adj).sum(-1, keepdim=True) / math.sqrt(block.att_dim)
    return torch.softmax(w, dim=1) * block.v(X)


def test_shapes_and_dense_reference():
    torch.manual_seed(0)
    block = CAMILSelfAttention(5, att_dim=4)
    X, adj = torch.randn(3, 7, 5), random_adj()
    L, s = block(X, adj, return_att=True)
    assert L.shape == (3, 7, 5) and s.shape == (3, 7)
    torch.testing.assert_close(L, dense_reference(block, X, adj), atol=1e-6, rtol=0)
    torch.testing.assert_close(s.sum(1), torch.ones(3), atol=1e-6, rtol=0)
    assert block.qk.weight.shape == (8, 5) and block.v.weight.shape == (5, 5)
    assert block.qk.bias is None and block.v.bias is None


def test_hand_case_path_graph():
    # Path 0 - 1 - 2 (weights 1, node 1 -> 2 weighs 0.5); q = k = v = x of size 1, scale 1:
    # w_0 = x0 x1 = 2, w_1 = x1 x0 + 0.5 x1 x2 = 2 + 3 = 5, w_2 = x2 x1 = 6; l_i = softmax(w)_i x_i.
    block = CAMILSelfAttention(1, att_dim=1)
    with torch.no_grad():
        block.qk.weight.copy_(torch.ones(2, 1))
        block.v.weight.copy_(torch.ones(1, 1))
    X = torch.tensor([[[1.0], [2.0], [3.0]]])
    edge_index = torch.tensor([[[0, 1, 1, 2], [1, 0, 2, 1]]])
    L = block(X, edge_index=edge_index, edge_weight=torch.tensor([[1.0, 1.0, 0.5, 1.0]]))
    e = torch.tensor([math.exp(2.0), math.exp(5.0), math.exp(6.0)])
    expected = e / e.sum() * torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(L.flatten(), expected, atol=1e-6, rtol=0)


def test_padding_never_changes_real_outputs_bool_and_uint8():
    torch.manual_seed(0)
    block = CAMILSelfAttention(4, att_dim=8)
    adj = torch.ones(1, 6, 6)  # padded nodes 4, 5 are connected to everything
    X = torch.randn(1, 6, 4)
    alone, s_alone = block(X[:, :4], adj[:, :4, :4], return_att=True)
    for dtype in (torch.bool, torch.uint8):
        mask = torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=dtype)
        for garbage in (0.0, 1e3):
            X_pad = X.clone()
            X_pad[0, 4:] = garbage
            out, s = block(X_pad, adj, mask, return_att=True)
            torch.testing.assert_close(out[:, :4], alone, atol=1e-6, rtol=0)
            torch.testing.assert_close(s[:, :4], s_alone, atol=1e-6, rtol=0)
            assert bool((out[:, 4:] == 0).all()) and bool((s[:, 4:] == 0).all())


def test_all_masked_bag_is_finite_and_zero():
    block = CAMILSelfAttention(3, att_dim=2)
    out = block(torch.randn(2, 4, 3), torch.ones(2, 4, 4), torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]))
    assert torch.isfinite(out).all() and bool((out[1] == 0).all())


def test_dense_sparse_and_edge_list_agree():
    torch.manual_seed(0)
    block = CAMILSelfAttention(5, att_dim=4)
    X, adj = torch.randn(3, 7, 5), random_adj(seed=1)
    edge_index, edge_weight = edge_list_from_adj(adj)
    dense = block(X, adj)
    torch.testing.assert_close(block(X, adj.to_sparse()), dense, atol=1e-6, rtol=0)
    listed = block(X, edge_index=edge_index, edge_weight=edge_weight)
    torch.testing.assert_close(listed, dense, atol=1e-6, rtol=0)


@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_scripts_and_matches_eager():
    torch.manual_seed(0)
    block = CAMILSelfAttention(5, att_dim=4)
    X, adj = torch.randn(2, 7, 5), random_adj(B=2)
    mask = torch.tensor([[True] * 7, [True] * 5 + [False] * 2])
    edge_index, edge_weight = edge_list_from_adj(adj)
    scripted = torch.jit.script(block)
    got = scripted(X, mask=mask, edge_index=edge_index, edge_weight=edge_weight)
    torch.testing.assert_close(got, block(X, adj, mask), atol=1e-6, rtol=0)
