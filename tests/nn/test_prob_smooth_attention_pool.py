import pytest
import torch

from milsdk.nn import ProbSmoothAttentionPool
from milsdk.nn.adjacency import edge_list_from_adj


def _graph(B: int, N: int, seed: int = 0, self_loops: bool = True) -> torch.Tensor:
    """(B, N, N) symmetric, symmetrically normalised random adjacency (with self-loops by default)."""
    gen = torch.Generator().manual_seed(seed)
    A = (torch.rand(B, N, N, generator=gen) > 0.6).float()
    A = torch.triu(A, diagonal=1)
    A = A + A.transpose(1, 2)
    if self_loops:
        A = A + torch.eye(N)
    d = A.sum(-1).clamp_min(1e-12).rsqrt()
    return d.unsqueeze(-1) * A * d.unsqueeze(-2)


def _dense_kl(mu, log_var, adj, lengths):
    """The smoothness term by hand, per bag on its real block: (mu^T L mu + Tr(L S) - logdet(S) / 2) / n."""
    terms = []
    for b, n in enumerate(lengths):
        m = mu[b, :n, 0].double()
        L = torch.eye(n, dtype=torch.float64) - adj[b, :n, :n].double()
        t = m @ L @ m
        if log_var is not None:
            v = log_var[b, :n, 0].double()
            t = t + torch.trace(L @ torch.diag(v.exp())) - 0.5 * v.sum()
        terms.append(t / n)
    return torch.stack(terms).mean()


@pytest.mark.parametrize("covar_mode", ["diag", "zero"])
def test_shapes_in_training_and_eval(covar_mode):
    torch.manual_seed(0)
    pool = ProbSmoothAttentionPool(in_dim=4, att_dim=3, covar_mode=covar_mode, n_samples_train=7)
    X, adj = torch.randn(2, 5, 4), _graph(2, 5)
    z, f, mu, log_var, kl = pool(
        X, adj, return_att_samples=True, return_att_dist=True, return_kl_div=True
    )
    S = 7 if covar_mode == "diag" else 1
    assert z.shape == (2, 4, S) and f.shape == (2, 5, S) and mu.shape == (2, 5, 1) and kl.dim() == 0
    assert (log_var is None) == (covar_mode == "zero")
    if covar_mode == "diag":
        assert log_var.shape == (2, 5, 1)
        assert pool(X, n_samples=3).shape == (2, 4, 3)
    pool.eval()
    assert pool(X).shape == (2, 4, 1)
    assert pool(X, adj, return_kl_div=True)[1].dim() == 0


def test_eval_uses_the_mean_and_is_deterministic():
    torch.manual_seed(0)
    pool = ProbSmoothAttentionPool(in_dim=3, att_dim=4, n_samples_train=5, n_samples_test=9).eval()
    X = torch.randn(2, 6, 3)
    z, f, mu, _ = pool(X, return_att_samples=True, return_att_dist=True)
    assert torch.equal(f, mu)
    s = torch.softmax(mu, dim=1)
    assert torch.allclose(z, torch.bmm(X.transpose(1, 2), s), atol=1e-6)
    assert torch.equal(pool(X), pool(X))
    # explicit samples in eval: the predictive distribution, random
    draws = pool(X, return_att_samples=True, n_samples=pool.n_samples_test)[1]
    assert draws.shape == (2, 6, 9) and not torch.equal(draws[..., :1], mu)


def test_training_samples_are_clipped_gaussian_draws_around_the_mean():
    torch.manual_seed(0)
    pool = ProbSmoothAttentionPool(in_dim=3, att_dim=4, n_samples_train=4000)
    X = torch.randn(1, 3, 3)
    _, f, mu, log_var = pool(X, return_att_samples=True, return_att_dist=True)
    assert f.abs().max() <= 20
    assert torch.allclose(f.mean(-1, keepdim=True), mu, atol=0.1)
    assert torch.allclose(f.var(-1, keepdim=True), log_var.exp(), rtol=0.15)


def test_kl_hand_computed_three_instances():
    pool = ProbSmoothAttentionPool(in_dim=2, att_dim=2)
    mu = torch.tensor([[[1.0], [2.0], [3.0]]])
    log_var = torch.zeros(1, 3, 1)
    # path graph 0 - 1 - 2 with weights 0.5: mu^T A mu = 2 * 0.5 * (1*2 + 2*3) = 8, mu^T mu = 14
    edge_index = torch.tensor([[[0, 1, 1, 2], [1, 0, 2, 1]]])
    edge_weight = torch.full((1, 4), 0.5)
    kl = pool.kl_div(mu, log_var, None, edge_index, edge_weight)
    # ((14 - 8) + Tr(I - A) * 1 - 0) / 3 = (6 + 3) / 3
    assert float(kl) == pytest.approx(3.0)
    assert float(pool.kl_div(mu, None, None, edge_index, edge_weight)) == pytest.approx(2.0)
    # no graph: the KL to a standard normal prior (up to the constant)
    assert float(pool.kl_div(mu, None)) == pytest.approx(14.0 / 3)


@pytest.mark.parametrize("covar_mode", ["diag", "zero"])
def test_kl_matches_a_dense_computation_with_padding(covar_mode):
    torch.manual_seed(1)
    pool = ProbSmoothAttentionPool(in_dim=4, att_dim=3, covar_mode=covar_mode)
    lengths = [5, 2, 7]
    X = torch.randn(3, 7, 4)
    adj = _graph(3, 7, seed=2)
    mask = torch.zeros(3, 7, dtype=torch.uint8)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        adj[b, :, n:] = 0.3  # edges to padded instances must change nothing
        adj[b, n:, :] = 0.3
        X[b, n:] = 1e4  # nor can garbage features there
    _, mu, log_var, kl = pool(X, adj, mask, return_att_dist=True, return_kl_div=True)
    assert torch.isfinite(kl)
    expected = _dense_kl(mu.detach(), None if log_var is None else log_var.detach(), adj, lengths)
    assert float(kl.detach()) == pytest.approx(float(expected), rel=1e-5, abs=1e-6)


def test_dense_sparse_and_edge_list_give_the_same_term():
    torch.manual_seed(2)
    pool = ProbSmoothAttentionPool(in_dim=3, att_dim=4)
    X, adj = torch.randn(2, 6, 3), _graph(2, 6, seed=5)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2], dtype=torch.bool)
    dense = pool(X, adj, mask, return_kl_div=True, n_samples=2)[1]
    sparse = pool(X, adj.to_sparse(), mask, return_kl_div=True, n_samples=2)[1]
    edge_index, edge_weight = edge_list_from_adj(adj)
    edges = pool(
        X, mask=mask, return_kl_div=True, edge_index=edge_index, edge_weight=edge_weight, n_samples=2
    )[1]
    assert float((dense - sparse).abs()) <= 1e-6 and float((dense - edges).abs()) <= 1e-6


def test_padding_and_other_bags_never_change_a_bag():
    torch.manual_seed(3)
    pool = ProbSmoothAttentionPool(in_dim=4, att_dim=3).eval()
    bags = [torch.randn(3, 4), torch.randn(6, 4)]
    graphs = [_graph(1, 3, seed=7)[0], _graph(1, 6, seed=8)[0]]
    X = torch.full((2, 9, 4), 50.0)
    adj = torch.zeros(2, 9, 9)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    for b, (x, a) in enumerate(zip(bags, graphs)):
        X[b, : len(x)], adj[b, : len(x), : len(x)], mask[b, : len(x)] = x, a, True
    z, kl = pool(X, adj, mask, return_kl_div=True)
    alone = [pool(x[None], a[None], return_kl_div=True) for x, a in zip(bags, graphs)]
    for b, (z_b, _) in enumerate(alone):
        assert torch.allclose(z[b], z_b[0], atol=1e-6)
    # the batch term is the mean of the bags' terms, each normalised by its own size
    assert float(kl) == pytest.approx(float((alone[0][1] + alone[1][1]) / 2), rel=1e-6)


def test_empty_bag_is_finite_and_left_out_of_the_mean():
    torch.manual_seed(4)
    pool = ProbSmoothAttentionPool(in_dim=3, att_dim=2)
    X, adj = torch.randn(2, 4, 3), _graph(2, 4)
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    z, kl = pool(X, adj, mask, return_kl_div=True)
    assert torch.isfinite(z).all() and torch.isfinite(kl)
    assert float(kl) == pytest.approx(float(pool(X[:1], adj[:1], mask[:1], return_kl_div=True)[1]), rel=1e-6)


def test_gradients_stay_finite_with_garbage_padding():
    torch.manual_seed(5)
    pool = ProbSmoothAttentionPool(in_dim=3, att_dim=2, n_samples_train=3)
    X = torch.randn(1, 5, 3)
    X[0, 3:] = 1e6
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    z, kl = pool(X, _graph(1, 5), mask, return_kl_div=True)
    (z[..., :3].sum() + kl).backward()
    assert all(torch.isfinite(p.grad).all() for p in pool.parameters() if p.grad is not None)


def test_bad_arguments():
    with pytest.raises(ValueError, match="covar_mode"):
        ProbSmoothAttentionPool(in_dim=2, covar_mode="full")
    with pytest.raises(ValueError, match="n_samples"):
        ProbSmoothAttentionPool(in_dim=2, n_samples_train=0)
    pool = ProbSmoothAttentionPool(in_dim=2, att_dim=2)
    with pytest.raises(ValueError, match="adj must be"):
        pool(torch.randn(1, 3, 2), torch.ones(1, 3, dtype=torch.bool))  # a mask in the adj slot


def test_lazy_in_dim_and_torchscript_steps():
    pool = ProbSmoothAttentionPool(in_dim=None, att_dim=2)
    assert pool(torch.randn(2, 3, 5), n_samples=2).shape == (2, 5, 2)
    pool = ProbSmoothAttentionPool(in_dim=3, att_dim=2).eval()
    scripted = torch.jit.script(pool)
    X, mask = torch.randn(2, 4, 3), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    edge_index, edge_weight = edge_list_from_adj(_graph(2, 4))
    z, f, mu, log_var = scripted.pool_samples(X, mask, None)
    assert torch.allclose(z, pool(X, mask=mask), atol=1e-6)
    kl = scripted.graph_kl_div(X, mu, log_var, mask, None, edge_index, edge_weight)
    assert torch.allclose(kl, pool.graph_kl_div(X, mu, log_var, mask, None, edge_index, edge_weight))
