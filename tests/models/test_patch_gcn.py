"""What is special to PatchGCN (the rest is the registry-driven contract suite): the reference's layout and
defaults, lazy construction, dense adj = sparse adj = edge list after training at unseen sizes, padding that
adj links to real instances, TorchScript on the edge list."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from milsdk.errors import ModelConfigError
from milsdk.models import PatchGCN, create_model
from milsdk.nn.adjacency import edge_list_from_adj
from milsdk.utils.graph import bag_adj

JIT_DEPRECATED = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"


def grid_batch(sizes: list[int], dim: int, seed: int = 0, fill: float = 0.0):
    """Bags on normalised 8-neighbour grids, padded: X (B, N, D), dense adj (B, N, N), mask (B, N) bool."""
    rng = np.random.default_rng(seed)
    N = max(sizes)
    X = torch.full((len(sizes), N, dim), fill)
    adj = torch.zeros(len(sizes), N, N)
    mask = torch.zeros(len(sizes), N, dtype=torch.bool)
    for b, n in enumerate(sizes):
        side = int(np.ceil(np.sqrt(n)))
        edge_index, edge_weight = bag_adj(np.stack([np.arange(n) // side, np.arange(n) % side], axis=1))
        X[b, :n] = torch.from_numpy(rng.standard_normal((n, dim)).astype(np.float32))
        adj[b, edge_index[0], edge_index[1]] = torch.from_numpy(edge_weight)
        mask[b, :n] = True
    return X, adj, mask


def build(n_classes: int = 1, seed: int = 0) -> PatchGCN:
    torch.manual_seed(seed)
    return PatchGCN(in_shape=(6,), n_classes=n_classes, **PatchGCN.test_config)


def test_reference_defaults_layout_and_lazy_construction():
    model = create_model("PatchGCN", in_shape=(10,))
    cfg = model.config
    assert (cfg["n_gcn_layers"], cfg["mlp_depth"], cfg["hidden_dim"], cfg["att_dim"]) == (4, 1, None, 128)
    assert len(model.gcn_layers) == 4 and model.gcn_layers[0].block == "plain"
    assert model.mlp[0][0].in_features == 10 + 4 * 10  # input and every layer output are concatenated
    lazy = PatchGCN(None, n_gcn_layers=2, hidden_dim=8, att_dim=8)
    X, adj, mask = grid_batch([5, 3], 7)
    assert lazy(X, adj, mask).shape == (2,) and lazy.config["in_shape"] == (7,)
    with pytest.raises(ModelConfigError, match="in_shape or hidden_dim"):
        PatchGCN(None)


@pytest.mark.parametrize("n_classes", [1, 3])
def test_dense_sparse_and_edge_list_agree_after_training_at_unseen_sizes(n_classes):
    model = build(n_classes)
    X, adj, mask = grid_batch([9, 4, 7, 12], 6, seed=1)
    Y = torch.tensor([0, 1, 2, 1]) % max(n_classes, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        optimizer.zero_grad()
        sum(model.compute_loss(Y, X, adj, mask)[1].values()).backward()
        optimizer.step()
    model.eval()
    X, adj, mask = grid_batch([23, 1, 31], 6, seed=2, fill=3.0)
    edge_index, edge_weight = edge_list_from_adj(adj)
    with torch.no_grad():
        want = model(X, adj, mask, return_att=True)
        for got in (model(X, adj.to_sparse(), mask.to(torch.uint8), return_att=True),
                    model(X, mask=mask, return_att=True, edge_index=edge_index, edge_weight=edge_weight),
                    model.predict(X, mask=mask, edge_index=edge_index, edge_weight=edge_weight)):
            for a, b in zip(got, want):
                assert torch.allclose(a, b, atol=1e-5)
    assert want[0].shape == ((3,) if n_classes == 1 else (3, n_classes)) and want[1].shape == (3, 31)


def test_padding_linked_by_adj_changes_nothing():
    model = build().eval()
    X, adj, mask = grid_batch([6, 10], 6, fill=50.0)
    adj = adj + (~mask).float().unsqueeze(1)  # every node links to the padding: those edges must be dropped
    with torch.no_grad():
        logits, att = model(X, adj, mask, return_att=True)
        alone, alone_att = model(X[:1, :6], adj[:1, :6, :6], return_att=True)
    assert torch.allclose(logits[:1], alone, atol=1e-5) and torch.allclose(att[:1, :6], alone_att, atol=1e-5)


@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_scripted_model_on_the_edge_list_equals_eager():
    model = build(3).eval()
    X, adj, mask = grid_batch([8, 5], 6)
    edge_index, edge_weight = edge_list_from_adj(adj)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        got = scripted(X, mask=mask, return_att=True, edge_index=edge_index, edge_weight=edge_weight)
        want = model(X, adj, mask, return_att=True)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-6)
