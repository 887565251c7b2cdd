"""SmMultiheadSelfAttention: Sm applied to the masked multi-head self-attention output (against the two blocks
run by hand), masking, attention maps under a mask (no NaN, defect 8.2), dense vs edge list, TorchScript."""

from __future__ import annotations

import torch

from milsdk.nn.adjacency import edge_list_from_adj
from milsdk.nn.attention import MultiheadSelfAttention, SmMultiheadSelfAttention
from milsdk.nn.sm import Sm

SIZES = [6, 4, 1]


def inputs():
    torch.manual_seed(0)
    X = torch.randn(3, 6, 8)
    adj = torch.zeros(3, 6, 6)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    for b, k in enumerate(SIZES):
        mask[b, :k] = True
        ring = torch.roll(torch.eye(k), 1, 0)
        adj[b, :k, :k] = 0.5 * (ring + ring.T) if k > 2 else 0.0  # a cycle: symmetric, degree 1 after /2
    return X, adj, mask


def test_is_sm_of_the_self_attention_output():
    X, adj, mask = inputs()
    att = SmMultiheadSelfAttention(8, 6, att_dim=8, n_heads=2, sm_alpha=0.5)
    plain = MultiheadSelfAttention(8, 6, att_dim=8, n_heads=2)
    plain.load_state_dict(att.state_dict())  # fixed alpha: Sm adds no state
    want = Sm(alpha=0.5)(plain(X, mask), adj, mask)
    y = att(X, adj, mask)
    assert y.shape == (3, 6, 6)
    assert torch.allclose(y, want, atol=1e-6)


def test_masking_and_attention_maps_without_nan():
    X, adj, mask = inputs()
    att = SmMultiheadSelfAttention(8, att_dim=8, n_heads=2)
    y, weights = att(X, adj, mask, return_att=True)
    assert weights.shape == (3, 2, 6, 6) and torch.isfinite(weights).all()
    real_rows = weights.sum(-1)[mask[:, None, :].expand(3, 2, 6)]
    assert torch.allclose(real_rows, torch.ones_like(real_rows), atol=1e-6)
    assert float(weights[:, :, :, 4:][~mask[:, None, None, 4:].expand(3, 2, 6, 2)].abs().max()) == 0.0
    assert torch.allclose(att(X, adj, mask), y)  # the memory-efficient path gives the same outputs
    junk = X.clone()
    junk[~mask] = 30.0
    assert torch.allclose(att(junk, adj, mask.to(torch.uint8)), y, atol=1e-5)
    for b, k in enumerate(SIZES):
        assert torch.allclose(att(X[b : b + 1, :k], adj[b : b + 1, :k, :k]), y[b : b + 1, :k], atol=1e-5)


def test_dense_sparse_edge_list_and_torchscript_agree():
    X, adj, mask = inputs()
    att = SmMultiheadSelfAttention(8, att_dim=8, n_heads=2, sm_mode="exact")
    edge_index, edge_weight = edge_list_from_adj(adj)
    y = att(X, adj, mask)
    assert torch.allclose(att(X, adj.to_sparse(), mask), y, atol=1e-6)
    assert torch.allclose(att(X, mask=mask, edge_index=edge_index, edge_weight=edge_weight), y, atol=1e-6)
    scripted = torch.jit.script(att)
    assert torch.allclose(scripted(X, None, mask, False, edge_index, edge_weight), y, atol=1e-6)
