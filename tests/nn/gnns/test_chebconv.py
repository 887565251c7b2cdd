"""ChebConv against a dense computation of the Chebyshev recursion; lambda_max by power iteration against a dense
eigen-solver; the per-node term layout (no cross-node mixing); masking; TorchScript."""

from __future__ import annotations

import pytest
import torch

from milsdk.nn.adjacency import edge_list_from_adj
from milsdk.nn.gnns import ChebConv
from milsdk.nn.gnns.chebconv import laplacian_lambda_max


def sym_adj(B: int = 2, N: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = torch.rand(B, N, N, generator=g) * (torch.rand(B, N, N, generator=g) < 0.4)
    return A + A.transpose(1, 2)


def dense_cheb(conv: ChebConv, x: torch.Tensor, A: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Y = [T_0(L~) X, ..., T_{K-1}(L~) X] W with L~ = 2 / lambda (D - A) - I as dense matrices."""
    L = torch.diag_embed(A.sum(-1)) - A
    eye = torch.eye(A.shape[-1]).expand_as(A)
    Ls = 2.0 / (lam.reshape(-1, 1, 1) + 1e-6) * L - eye
    T = [eye, Ls]
    while len(T) < conv.K:
        T.append(2 * Ls @ T[-1] - T[-2])
    Z = torch.cat([t @ x for t in T[: conv.K]], dim=-1)
    return Z @ conv.fc.weight.T


@pytest.mark.parametrize("K", [1, 2, 3, 5])
def test_matches_dense_recursion_with_given_and_default_lambda(K):
    torch.manual_seed(K)
    conv = ChebConv(3, 4, K=K, compute_lambda_max=False)
    x, A = torch.randn(2, 8, 3), sym_adj()
    lam = torch.tensor([3.0, 7.5])
    assert conv(x, A, lam).shape == (2, 8, 4)
    for lam_given, lam_used in ((lam, lam), (None, torch.full((2,), 2.0))):
        expected = dense_cheb(conv, x, A, lam_used)
        # relative to the largest entry: a lambda below the true lambda_max makes high orders large (~1e3 here)
        assert (conv(x, A, lam_given) - expected).abs().max() <= 1e-5 * max(1.0, float(expected.abs().max()))


def test_power_iteration_lambda_max_matches_dense_eigenvalues():
    A = sym_adj(3, 8, seed=1)
    edge_index, edge_weight = edge_list_from_adj(A)
    exact = torch.linalg.eigvalsh(torch.diag_embed(A.sum(-1)) - A).amax(-1)
    estimate = laplacian_lambda_max(edge_index, edge_weight, 8)
    assert torch.all(estimate <= exact + 1e-4)  # a Rayleigh quotient of a PSD matrix: from below
    assert torch.allclose(estimate, exact, rtol=1e-3)
    conv = ChebConv(3, 4, K=3)  # compute_lambda_max=True by default
    x = torch.randn(3, 8, 3)
    assert torch.allclose(conv(x, A), dense_cheb(conv, x, A, estimate), atol=1e-4)
    assert float(laplacian_lambda_max(torch.zeros(1, 2, 0, dtype=torch.long), torch.zeros(1, 0), 4)) == 0.0


def test_terms_are_laid_out_per_node():
    """Node i's output uses only node i's K terms: on a graph without edges every T_k X is +-X, so each node's
    output is a function of its own features (the reference's view() mixed nodes into one row)."""
    conv = ChebConv(2, 3, K=3, compute_lambda_max=False)
    x = torch.randn(1, 5, 2)
    y = conv(x, torch.zeros(1, 5, 5))
    # lambda = 2: L~ = -I, so Z = [x, -x, x]
    expected = torch.cat([x, -x, x], -1) @ conv.fc.weight.T
    assert torch.allclose(y, expected, atol=1e-6)


@pytest.mark.parametrize("compute", [True, False])
def test_padding_never_changes_real_rows_and_edge_list_script(compute):
    conv = ChebConv(3, 4, K=3, compute_lambda_max=compute)
    x, A = torch.randn(1, 5, 3), sym_adj(1, 5)
    alone = conv(x, A)
    padded_x = torch.cat([x, 50 * torch.randn(1, 3, 3)], 1)
    padded_A = torch.ones(1, 8, 8)
    padded_A[:, :5, :5] = A
    mask = torch.arange(8).lt(5).unsqueeze(0)
    assert torch.allclose(conv(padded_x, padded_A, mask=mask)[:, :5], alone, atol=1e-5)
    edge_index, edge_weight = edge_list_from_adj(padded_A)
    scripted = torch.jit.script(conv)
    got = scripted(padded_x, mask=mask.to(torch.uint8), edge_index=edge_index, edge_weight=edge_weight)
    assert torch.allclose(got[:, :5], alone, atol=1e-5)


def test_lazy_input_size_and_invalid_K():
    assert ChebConv(None, 4, K=2)(torch.randn(2, 3, 6), torch.eye(3).expand(2, 3, 3)).shape == (2, 3, 4)
    with pytest.raises(ValueError, match="K"):
        ChebConv(3, 4, K=0)
