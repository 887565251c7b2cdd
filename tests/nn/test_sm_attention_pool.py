"""SmAttentionPool: shapes for every sm_where, the computation against a plain one, masking, dense vs edge
list, spectral normalisation placement, TorchScript."""

from __future__ import annotations

import pytest
import torch

from milsdk.nn.adjacency import edge_list_from_adj
from milsdk.nn.attention import SmAttentionPool
from milsdk.nn.sm import Sm


def batch_adj(sizes: list[int], n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    adj = torch.zeros(len(sizes), n, n)
    for b, k in enumerate(sizes):
        w = torch.triu(torch.rand(k, k, generator=g) * (torch.rand(k, k, generator=g) < 0.5), 1)
        w = w + w.T
        d = w.sum(1).clamp_min(1e-12).rsqrt()
        adj[b, :k, :k] = d[:, None] * w * d[None, :]
    return adj


SIZES = [6, 4, 1]


def inputs(D: int = 5):
    torch.manual_seed(0)
    X = torch.randn(3, 6, D)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    for b, k in enumerate(SIZES):
        mask[b, :k] = True
    return X, batch_adj(SIZES, 6), mask


@pytest.mark.parametrize("where", ["early", "mid", "late", "none"])
def test_shapes_and_the_plain_computation(where):
    X, adj, _ = inputs()
    pool = SmAttentionPool(5, att_dim=4, act="tanh", sm_alpha=0.6, sm_where=where)
    z, f = pool(X, adj, return_att=True)
    assert z.shape == (3, 5) and f.shape == (3, 6)
    sm = Sm(alpha=0.6)
    Xs = sm(X, adj) if where == "early" else X
    H = pool.proj1(Xs)
    H = sm(H, adj) if where == "mid" else H
    f_want = pool.proj2(torch.tanh(H))
    f_want = (sm(f_want, adj) if where == "late" else f_want).squeeze(-1)
    assert torch.allclose(f, f_want, atol=1e-6)
    assert torch.allclose(z, (torch.softmax(f_want, 1).unsqueeze(-1) * Xs).sum(1), atol=1e-6)
    assert torch.equal(pool(X, adj), z)


def test_sm_is_skipped_where_the_reference_skips_it():
    assert SmAttentionPool(5, sm_where="none").sm is None
    assert SmAttentionPool(5, sm_alpha=0.0).sm is None
    assert SmAttentionPool(5, sm_steps=0).sm is None
    assert SmAttentionPool(5, sm_mode="exact", sm_steps=0).sm is not None  # exact mode has no steps
    with pytest.raises(ValueError, match="sm_where"):
        SmAttentionPool(5, sm_where="after")
    with pytest.raises(ValueError, match="act"):
        SmAttentionPool(5, act="swish")


@pytest.mark.parametrize("where", ["early", "mid", "late"])
@pytest.mark.parametrize("mode", ["approx", "exact"])
def test_padding_never_changes_real_outputs(where, mode):
    X, adj, mask = inputs()
    pool = SmAttentionPool(5, att_dim=4, sm_where=where, sm_mode=mode)
    z, f = pool(X, adj, mask, return_att=True)
    junk_X, junk_adj = X.clone(), adj.clone()
    junk_X[~mask] = 50.0
    junk_adj[1, :, 4:] += 0.5  # edges into the padding of bags 1 and 2
    junk_adj[2, 1:, :] += 0.5
    z2, f2 = pool(junk_X, junk_adj, mask.to(torch.uint8), return_att=True)
    assert torch.allclose(z2, z, atol=1e-5) and torch.allclose(f2[mask], f[mask], atol=1e-5)
    for b, k in enumerate(SIZES):
        z1, f1 = pool(X[b : b + 1, :k], adj[b : b + 1, :k, :k], return_att=True)
        assert torch.allclose(z1, z[b : b + 1], atol=1e-5) and torch.allclose(f1, f[b : b + 1, :k], atol=1e-5)
    assert torch.isfinite(torch.cat(pool(X, adj, torch.zeros_like(mask), return_att=True), 1)).all()


def test_dense_sparse_and_edge_list_agree():
    X, adj, mask = inputs()
    pool = SmAttentionPool(5, att_dim=4, sm_where="mid")
    edge_index, edge_weight = edge_list_from_adj(adj)
    z, f = pool(X, adj, mask, return_att=True)
    for other in (
        pool(X, adj.to_sparse(), mask, return_att=True),
        pool(X, mask=mask, return_att=True, edge_index=edge_index, edge_weight=edge_weight),
    ):
        assert torch.allclose(other[0], z, atol=1e-6) and torch.allclose(other[1], f, atol=1e-6)


def test_spectral_norm_is_put_on_the_layers_after_sm():
    def normalised(pool):
        return [
            torch.nn.utils.parametrize.is_parametrized(layer, "weight") for layer in (pool.proj1, pool.proj2)
        ]

    assert normalised(SmAttentionPool(5, sm_where="early", spectral_norm=True)) == [True, True]
    assert normalised(SmAttentionPool(5, sm_where="none", spectral_norm=True)) == [True, True]
    assert normalised(SmAttentionPool(5, sm_where="mid", spectral_norm=True)) == [False, True]
    assert normalised(SmAttentionPool(5, sm_where="late", spectral_norm=True)) == [False, False]
    pool = SmAttentionPool(5, att_dim=4, sm_where="early", spectral_norm=True).eval()
    X, adj, mask = inputs()
    assert torch.equal(pool(X, adj, mask), pool(X, adj, mask))  # eval: the stored sigma estimate


def test_torchscript_on_the_edge_list():
    X, adj, mask = inputs()
    edge_index, edge_weight = edge_list_from_adj(adj)
    pool = SmAttentionPool(5, att_dim=4, sm_where="late")
    scripted = torch.jit.script(pool)
    got = scripted(X, None, mask, True, edge_index, edge_weight)
    want = pool(X, adj, mask, return_att=True)
    assert torch.allclose(got[0], want[0], atol=1e-6) and torch.allclose(got[1], want[1], atol=1e-6)
