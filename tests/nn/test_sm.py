"""The Sm operator: identity at alpha = 0, a hand case, ExactSm solves its system (against
torch.linalg.solve),
ApproxSm converges to ExactSm, masking, dense / sparse / edge-list forms, gradients, TorchScript."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from milsdk.nn.adjacency import edge_list_from_adj
from milsdk.nn.sm import ApproxSm, ExactSm, Sm
from milsdk.utils.graph import build_adj, normalize_adj


def grid_adj(side: int, dist_thr: float = 1.0) -> torch.Tensor:
    """(side^2, side^2) symmetric normalised adjacency of a patch grid (4-neighbour for dist_thr = 1:
    bipartite, spectrum reaches -1, the hardest case for CG)."""
    coords = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2).astype(np.float32)
    n = side * side
    edge_index, edge_weight = build_adj(coords, dist_thr=dist_thr)
    adj = torch.zeros(n, n)
    adj[edge_index[0], edge_index[1]] = torch.from_numpy(normalize_adj(edge_index, edge_weight, n))
    return adj


def batch_adj(sizes: list[int], n: int, seed: int = 0) -> torch.Tensor:
    """(B, n, n) symmetric normalised random graphs on the first sizes[b] nodes of each bag."""
    g = torch.Generator().manual_seed(seed)
    adj = torch.zeros(len(sizes), n, n)
    for b, k in enumerate(sizes):
        w = torch.rand(k, k, generator=g) * (torch.rand(k, k, generator=g) < 0.5)
        w = torch.triu(w, 1)
        w = w + w.T
        d = w.sum(1).clamp_min(1e-12).rsqrt()
        adj[b, :k, :k] = d[:, None] * w * d[None, :]
    return adj


def with_coef(module: torch.nn.Module, coef: float) -> torch.nn.Module:
    module.coef.data.fill_(coef)
    return module


@pytest.mark.parametrize("mode", ["approx", "exact"])
def test_alpha_zero_is_the_identity(mode):
    f = torch.randn(2, 9, 3)
    adj = grid_adj(3)[None].expand(2, 9, 9)
    assert torch.equal(Sm(alpha=0.0, mode=mode)(f, adj), f)
    assert torch.equal(Sm(alpha=0, num_steps=10, mode=mode)(f, adj), f)
    assert torch.equal(ApproxSm(alpha="trainable", num_steps=0)(f, adj), f)


def test_hand_case_two_nodes():
    # A = [[0, 1], [1, 0]], gamma = 1: ((1 + 1) I - A)^-1 = [[2, 1], [1, 2]] / 3
    adj = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    f = torch.tensor([[[1.0], [0.0]]])
    assert torch.allclose(ExactSm()(f, adj), torch.tensor([[[2 / 3], [1 / 3]]]), atol=1e-6)
    # alpha = 3/4 is the iteration's alpha (the reference uses 1 - alpha in approx mode): one step is
    # G = f / 4 + 3/4 A f = [1/4, 3/4]
    assert torch.allclose(ApproxSm(alpha=0.75, num_steps=1)(f, adj), torch.tensor([[[0.25], [0.75]]]))


@pytest.mark.parametrize("coef", [0.5, 1.0, 5.0, 20.0])
def test_exact_sm_solves_its_linear_system(coef):
    adj = grid_adj(12)  # 144 nodes, bipartite
    f = torch.randn(2, 144, 3)
    g = with_coef(ExactSm(), coef)(f, adj[None].expand(2, 144, 144)).detach()
    M = (1 + coef) * torch.eye(144, dtype=torch.float64) - coef * adj.double()
    want = torch.linalg.solve(M, f.double())
    assert float((g.double() - want).abs().max()) <= 1e-5
    residual = (M @ g.double() - f.double()).abs().max()
    assert float(residual) <= 1e-5 * (1 + 2 * coef)


def test_fixed_alpha_and_the_trainable_coef_are_the_same_operator():
    adj = grid_adj(4)[None]
    f = torch.randn(1, 16, 2)
    for alpha in (0.3, 0.8):
        coef = alpha / (1 - alpha)
        assert torch.allclose(ExactSm(alpha=alpha)(f, adj), with_coef(ExactSm(), coef)(f, adj), atol=1e-6)
    # gamma = |coef|: a coef that drifted below 0 still smooths (and never diverges)
    assert torch.allclose(with_coef(ExactSm(), -2.0)(f, adj), with_coef(ExactSm(), 2.0)(f, adj))


def test_approx_converges_to_exact_as_num_steps_grows():
    adj = grid_adj(6, dist_thr=1.5)[None]
    f = torch.randn(1, 36, 4)
    for coef in (1.0, 4.0):
        exact = with_coef(ExactSm(), coef)(f, adj)
        errors = []
        for t in (1, 5, 20, 200):
            errors.append(float((with_coef(ApproxSm(num_steps=t), coef)(f, adj) - exact).abs().max()))
        assert errors == sorted(errors, reverse=True)
        assert errors[-1] <= 1e-5
        # the error contracts at least like alpha^t (spectral radius of A = 1)
        alpha = coef / (1 + coef)
        assert errors[2] <= 2 * alpha**20 * float(f.abs().max()) + 1e-6


@pytest.mark.parametrize("mode", ["approx", "exact"])
def test_dense_sparse_and_edge_list_agree(mode):
    adj = batch_adj([7, 5, 3], 7)
    f = torch.randn(3, 7, 4)
    sm = Sm(mode=mode)
    dense = sm(f, adj)
    edge_index, edge_weight = edge_list_from_adj(adj)
    assert torch.allclose(sm(f, adj.to_sparse()), dense, atol=1e-6)
    assert torch.allclose(sm(f, adj.double()), dense, atol=1e-6)  # the datasets' float64 adj (defect 8.1)
    assert torch.allclose(sm(f, edge_index=edge_index, edge_weight=edge_weight), dense, atol=1e-6)
    if mode == "approx":  # the dense definition, computed plainly
        g = f
        for _ in range(10):
            g = 0.5 * f + 0.5 * adj @ g
        assert torch.allclose(dense, g, atol=1e-6)


@pytest.mark.parametrize("mode", ["approx", "exact"])
def test_padding_never_changes_real_outputs_and_bags_are_independent(mode):
    sizes = [6, 4, 1]
    adj = batch_adj(sizes, 6)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    for b, k in enumerate(sizes):
        mask[b, :k] = True
    f = torch.randn(3, 6, 2)
    sm = Sm(mode=mode)
    out = sm(f, adj, mask)
    assert torch.equal(out[~mask], torch.zeros_like(out[~mask]))
    # junk at padded positions and junk edges into padding change nothing, bool or uint8 mask
    junk_adj = adj.clone()
    junk_adj[1, :, 4:] = 0.7
    junk_adj[1, 4:, :] = 0.7
    junk_f = f.clone()
    junk_f[~mask] = 100.0
    assert torch.allclose(sm(junk_f, junk_adj, mask.to(torch.uint8)), out, atol=1e-6)
    for b, k in enumerate(sizes):
        alone = sm(f[b : b + 1, :k], adj[b : b + 1, :k, :k])
        assert torch.allclose(alone, out[b : b + 1, :k], atol=1e-6)


def test_all_masked_and_zero_inputs_are_finite_with_finite_gradients():
    adj = batch_adj([5, 5], 5)
    f = torch.randn(2, 5, 3, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.uint8)
    sm = ExactSm()
    out = sm(f, adj, mask)
    assert torch.isfinite(out).all() and float(out[1].abs().max()) == 0.0
    out.square().sum().backward()
    assert torch.isfinite(f.grad).all() and torch.isfinite(sm.coef.grad) and float(sm.coef.grad) != 0.0


def test_gradient_matches_the_dense_solve():
    adj = batch_adj([6], 6)
    f = torch.randn(1, 6, 2, dtype=torch.float32)
    sm = ExactSm()
    sm(f, adj).sum().backward()
    coef = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    M = (1 + coef) * torch.eye(6, dtype=torch.float64) - coef * adj.double()
    torch.linalg.solve(M, f.double()).sum().backward()
    assert abs(float(sm.coef.grad) - float(coef.grad)) <= 1e-4


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="mode"):
        Sm(mode="dense")
    with pytest.raises(ValueError, match="alpha"):
        Sm(alpha=1.0)
    with pytest.raises(ValueError, match="alpha"):
        Sm(alpha="learned")
    with pytest.raises(ValueError, match="needs adj"):
        Sm()(torch.randn(1, 3, 2))


@pytest.mark.parametrize("mode", ["approx", "exact"])
def test_torchscript_on_the_edge_list(mode):
    adj = batch_adj([5, 3], 5)
    edge_index, edge_weight = edge_list_from_adj(adj)
    f = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    sm = Sm(mode=mode)
    scripted = torch.jit.script(sm)
    assert torch.allclose(scripted(f, None, mask, edge_index, edge_weight), sm(f, adj, mask), atol=1e-6)
