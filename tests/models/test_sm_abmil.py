"""What is special to SmABMIL (the contract suite checks the rest): the graph in every form (dense, sparse,
float64, edge list) gives the same outputs, edges into padding are ignored, every Sm placement / mode and
spectral normalisation trains and scripts, in_shape is required."""

from __future__ import annotations

import pytest
import torch

from milsdk.errors import ModelConfigError
from milsdk.models import SmABMIL, create_model
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
        {},
        {"sm_mode": "exact", "sm_where": "mid"},
        {"sm_where": "late", "sm_alpha": 0.7},
        {"sm_where": "early", "spectral_norm": True},
    ],
)
def test_graph_forms_agree_after_training(config):
    X, adj, mask = inputs()
    model = SmABMIL(in_shape=(6,), att_dim=4, sm_steps=4, n_classes=3, **config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    Y = torch.tensor([0, 1, 2])
    for _ in range(5):
        optimizer.zero_grad()
        logits, losses = model.compute_loss(Y, X, adj, mask)
        assert set(losses) == {"CrossEntropyLoss"}
        losses["CrossEntropyLoss"].backward()
        optimizer.step()
    model.eval()
    edge_index, edge_weight = edge_list_from_adj(adj)
    logits, f = model(X, adj, mask, return_att=True)
    assert logits.shape == (3, 3) and f.shape == (3, 8)
    for other in (
        model(X, adj.to_sparse(), mask, return_att=True),
        model(X, adj.double(), mask.to(torch.uint8), return_att=True),  # defect 8.1: float64 adj
        model(X, mask=mask, return_att=True, edge_index=edge_index, edge_weight=edge_weight),
        model.predict(X, adj, mask),
    ):
        assert torch.allclose(other[0], logits, atol=1e-5)
        assert torch.allclose(other[1][mask], f[mask], atol=1e-5)
    junk = adj.clone()
    junk[1, :, 5:] = 0.4  # edges into bag 1's padding
    assert torch.allclose(model(X, junk, mask), logits, atol=1e-5)
    if not config.get("spectral_norm"):  # spectral_norm's parametrisation is not scriptable (export traces)
        scripted = torch.jit.script(model)
        got = scripted(X, mask=mask, return_att=True, edge_index=edge_index, edge_weight=edge_weight)
        assert torch.allclose(got[0], logits, atol=1e-5)


def test_registered_binary_and_requires_in_shape():
    X, adj, mask = inputs()
    model = create_model("SmABMIL", in_shape=(6,), att_dim=4)
    assert model.extra_inputs == ("adj",) and model.attention_output == "logits"
    assert model(X, adj, mask).shape == (3,)
    with pytest.raises(ModelConfigError, match="in_shape"):
        SmABMIL(in_shape=None)
