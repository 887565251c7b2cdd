"""What is special to SmTransformerABMIL (the contract suite checks the rest): the encoder and the pool share
one resolved graph (dense, sparse and edge list agree), add_self with several layers works for any
transf_att_dim (defect 8.4), exact-mode Sm everywhere, head-count validation."""

from __future__ import annotations

import pytest
import torch

from milsdk.errors import ModelConfigError
from milsdk.models import SmTransformerABMIL
from milsdk.nn.adjacency import edge_list_from_adj

SIZES = [8, 5, 1]


def inputs(D: int = 6):
    torch.manual_seed(0)
    X = torch.randn(3, 8, D)
    adj = torch.zeros(3, 8, 8)
    mask = torch.zeros(3, 8, dtype=torch.bool)
    for b, k in enumerate(SIZES):
        mask[b, :k] = True
        if k > 2:
            ring = torch.roll(torch.eye(k), 1, 0)
            adj[b, :k, :k] = 0.5 * (ring + ring.T)
    return X, adj, mask


@pytest.mark.parametrize(
    "config",
    [
        # add_self (the default) with att_dim != feat_dim and 2 layers: defect 8.4
        {"transf_n_layers": 2, "transf_att_dim": 8},
        {"transf_sm_mode": "exact", "pool_sm_mode": "exact", "pool_sm_where": "late"},
    ],
)
def test_graph_forms_agree_after_training(config):
    X, adj, mask = inputs()
    config = {"pool_att_dim": 4, "transf_att_dim": 8, "transf_n_heads": 2, "pool_sm_steps": 3, **config}
    model = SmTransformerABMIL(in_shape=(6,), **config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    Y = torch.tensor([0.0, 1.0, 1.0])
    for _ in range(5):
        optimizer.zero_grad()
        _, losses = model.compute_loss(Y, X, adj, mask)
        assert set(losses) == {"BCEWithLogitsLoss"}
        losses["BCEWithLogitsLoss"].backward()
        optimizer.step()
    model.eval()
    edge_index, edge_weight = edge_list_from_adj(adj)
    logits, f = model(X, adj, mask, return_att=True)
    assert logits.shape == (3,) and f.shape == (3, 8) and torch.isfinite(f).all()
    edges = {"edge_index": edge_index, "edge_weight": edge_weight}
    for other in (
        model(X, adj.to_sparse(), mask.to(torch.uint8), return_att=True),
        model(X, mask=mask, return_att=True, **edges),
        torch.jit.script(model)(X, mask=mask, return_att=True, **edges),
    ):
        assert torch.allclose(other[0], logits, atol=1e-5)
        assert torch.allclose(other[1][mask], f[mask], atol=1e-5)
    for b, k in enumerate(SIZES):
        alone = model(X[b : b + 1, :k], adj[b : b + 1, :k, :k], return_att=True)
        assert torch.allclose(alone[0], logits[b : b + 1], atol=1e-5)
        assert torch.allclose(alone[1], f[b : b + 1, :k], atol=1e-5)


def test_invalid_configurations_raise():
    with pytest.raises(ModelConfigError, match="transf_n_heads"):
        SmTransformerABMIL(in_shape=(6,), transf_att_dim=10, transf_n_heads=4)
    with pytest.raises(ModelConfigError, match="in_shape"):
        SmTransformerABMIL(in_shape=None)
