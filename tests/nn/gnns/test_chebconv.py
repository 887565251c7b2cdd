"""ChebConv against a dense computation of the Chebyshev recursion; lambda_max by power iteration against a dense
eigen-solver; the per-node term layout (no cross-node mixing) and torchmil's (a view of the term stack, per bag);
masking; TorchScript."""

from __future__ import annotations

import pytest
import torch

from milsdk.nn.adjacency import edge_list_from_adj
from milsdk.nn.gnns import ChebConv
from milsdk.nn.gnns.chebconv import laplacian_lambda_max, torchmil_term_rows


def sym_adj(B: int = 2, N: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = torch.rand(B, N, N, generator=g) * (torch.rand(B, N, N, generator=g) < 0.4)
    return A + A.transpose(1, 2)


def dense_terms(K: int, x: torch.Tensor, A: torch.Tensor, lam: torch.Tensor) -> list[torch.Tensor]:
    """[T_0(L~) X, ..., T_{K-1}(L~) X], each (B, N, C), with L~ = 2 / lambda (D - A) - I as dense matrices."""
    L = torch.diag_embed(A.sum(-1)) - A
    eye = torch.eye(A.shape[-1]).expand_as(A)
    Ls = 2.0 / (lam.reshape(-1, 1, 1) + 1e-6) * L - eye
    T = [eye, Ls]
    while len(T) < K:
        T.append(2 * Ls @ T[-1] - T[-2])
    return [t @ x for t in T[:K]]


def dense_cheb(conv: ChebConv, x: torch.Tensor, A: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Y = [T_0(L~) X, ..., T_{K-1}(L~) X] W, each node's own terms concatenated."""
    return torch.cat(dense_terms(conv.K, x, A, lam), dim=-1) @ conv.fc.weight.T


def dense_cheb_view(conv: ChebConv, x: torch.Tensor, A: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """torchmil 1.0.2's layout, written as it does: the contiguous (B, K, N, C) stack viewed as (B, N, K C)."""
    B, N, C = x.shape
    Z = torch.stack(dense_terms(conv.K, x, A, lam), dim=1).contiguous()
    return Z.view(B, N, conv.K * C) @ conv.fc.weight.T


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


def test_lazy_input_size_and_invalid_K_and_layout():
    assert ChebConv(None, 4, K=2)(torch.randn(2, 3, 6), torch.eye(3).expand(2, 3, 3)).shape == (2, 3, 4)
    with pytest.raises(ValueError, match="K"):
        ChebConv(3, 4, K=0)
    with pytest.raises(ValueError, match="term_layout must be one of .*got 'stacked'"):
        ChebConv(3, 4, term_layout="stacked")


@pytest.mark.parametrize("K", [1, 2, 3, 5])
@pytest.mark.parametrize("N", [1, 2, 3, 7])
def test_torchmil_layout_equals_the_view_of_the_term_stack(K, N):
    torch.manual_seed(10 * K + N)
    conv = ChebConv(3, 4, K=K, compute_lambda_max=False, term_layout="torchmil")
    x, A = torch.randn(2, N, 3), sym_adj(2, N, seed=N)
    lam = torch.tensor([2.0, 4.5])
    for lam_given in (lam, None):  # None: 2.0
        used = lam if lam_given is not None else torch.full((2,), 2.0)
        expected = dense_cheb_view(conv, x, A, used)
        got = conv(x, A, lam_given)
        assert (got - expected).abs().max() <= 1e-5 * max(1.0, float(expected.abs().max()))
    if K > 1 and N > 1:  # rows mix nodes: not the per-node result
        per_node = dense_cheb(conv, x, A, lam)
        assert (conv(x, A, lam) - per_node).abs().max() > 1e-2


def test_torchmil_rows_index_the_flattened_stack():
    """Row i, slot j of a bag of n real nodes holds term (i K + j) // n at node (i K + j) % n."""
    B, K, N, C = 2, 3, 5, 2
    terms = torch.arange(B * K * N * C, dtype=torch.float32).reshape(B, K, N, C)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    rows = torchmil_term_rows(terms, mask).reshape(B, N, K, C)
    for b, n in enumerate((3, 5)):
        for i in range(n):
            for j in range(K):
                s = i * K + j
                assert torch.equal(rows[b, i, j], terms[b, s // n, s % n])
    assert torch.equal(torchmil_term_rows(terms)[1], rows[1].reshape(N, K * C))  # no mask: all real
    assert torch.isfinite(torchmil_term_rows(terms, torch.zeros(B, N, dtype=torch.bool))).all()


@pytest.mark.parametrize("compute", [True, False])
def test_torchmil_layout_is_per_bag_under_trailing_padding_and_scripts(compute):
    """Each bag's real rows are torchmil's rows of the bag alone (its own n), whatever the padding."""
    torch.manual_seed(3)
    conv = ChebConv(3, 4, K=3, compute_lambda_max=compute, term_layout="torchmil")
    sizes, N = (5, 1, 3), 8
    x = 50 * torch.randn(len(sizes), N, 3)
    adj = torch.ones(len(sizes), N, N)  # edges into the padding: dropped by the mask
    mask = torch.zeros(len(sizes), N, dtype=torch.bool)
    alone = []
    for b, n in enumerate(sizes):
        x[b, :n] = torch.randn(n, 3)
        adj[b, :n, :n] = sym_adj(1, n, seed=n)[0]
        mask[b, :n] = True
        alone.append(conv(x[b : b + 1, :n], adj[b : b + 1, :n, :n])[0])
    padded = conv(x, adj, mask=mask)
    edge_index, edge_weight = edge_list_from_adj(adj)
    scripted = torch.jit.script(conv)(x, mask=mask.to(torch.uint8), edge_index=edge_index, edge_weight=edge_weight)
    for out in (padded, scripted):
        assert torch.isfinite(out).all()
        for b, n in enumerate(sizes):
            assert torch.allclose(out[b, :n], alone[b], atol=1e-5)
    empty = conv(x[:1], adj[:1], mask=torch.zeros(1, N, dtype=torch.bool))
    assert torch.isfinite(empty).all()
