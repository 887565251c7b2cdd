"""What is special to GTP (the rest is the registry-driven contract suite): its loss keys, min-cut losses
that are finite and blind to padding, an attention that is a distribution over the real instances (the class
token's cluster attention mapped through the soft assignments), dense adj = sparse adj = edge list after
training, TorchScript and an ONNX edge-list export at other sizes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from milsdk.errors import ModelConfigError
from milsdk.models import GTP, create_model
from milsdk.nn.adjacency import edge_list_from_adj
from milsdk.utils.graph import build_adj

JIT_DEPRECATED = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
SMALL = GTP.test_config
LOSS_KEYS = {"BCEWithLogitsLoss", "MinCutLoss", "OrthoLoss"}


def grid_batch(sizes: list[int], dim: int, seed: int = 0, fill: float = 0.0):
    """Bags on 8-neighbour grids, padded: X (B, N, D), dense adj (B, N, N), mask (B, N), edge list."""
    rng = np.random.default_rng(seed)
    N = max(sizes)
    X = torch.full((len(sizes), N, dim), fill)
    adj = torch.zeros(len(sizes), N, N)
    mask = torch.zeros(len(sizes), N, dtype=torch.bool)
    for b, n in enumerate(sizes):
        side = int(np.ceil(np.sqrt(n)))
        coords = np.stack([np.arange(n) // side, np.arange(n) % side], axis=1)
        edge_index, edge_weight = build_adj(coords, dist_thr=1.5)
        X[b, :n] = torch.from_numpy(rng.standard_normal((n, dim)).astype(np.float32))
        adj[b, edge_index[0], edge_index[1]] = torch.from_numpy(edge_weight)
        mask[b, :n] = True
    edge_index, edge_weight = edge_list_from_adj(adj)
    return X, adj, mask, edge_index, edge_weight


def build(n_classes: int = 1, seed: int = 0) -> GTP:
    """The test configuration with a random class token (a zero one attends uniformly: trivial attention)."""
    torch.manual_seed(seed)
    model = GTP(in_shape=(6,), n_classes=n_classes, **SMALL)
    with torch.no_grad():
        model.cls_token.normal_()
    return model


def test_reference_defaults_and_in_shape_is_required():
    model = create_model("GTP", in_shape=(8,))
    cfg = model.config
    assert (cfg["att_dim"], cfg["n_clusters"], cfg["n_layers"], cfg["n_heads"]) == (512, 100, 1, 8)
    assert cfg["use_mlp"] is True and model.cluster_proj.out_features == 100
    assert GTP.extra_inputs == ("adj",) and GTP.attention_output == "weights"
    with pytest.raises(ModelConfigError, match="in_shape"):
        GTP()


def test_mlp_activation_option_defaults_to_gelu_and_is_checked():
    gelu = GTP(in_shape=(6,), **SMALL)
    relu = GTP(in_shape=(6,), mlp_activation="relu", **SMALL)
    assert all(isinstance(layer.mlp_module[1], torch.nn.GELU) for layer in gelu.transformer_encoder.layers)
    assert all(isinstance(layer.mlp_module[1], torch.nn.ReLU) for layer in relu.transformer_encoder.layers)
    relu.load_state_dict(gelu.state_dict())  # the same weights, only the activation differs
    X, adj, mask, _, _ = grid_batch([5], 6)
    with torch.no_grad():
        assert not torch.allclose(gelu.eval()(X, adj, mask), relu.eval()(X, adj, mask))
    with pytest.raises(ModelConfigError, match="mlp_activation='tanh'"):
        GTP(in_shape=(6,), mlp_activation="tanh", **SMALL)


def test_loss_keys_and_min_cut_losses_are_finite_and_blind_to_padding():
    model = build().eval()
    sizes = [14, 6, 1]
    X, adj, mask, _, _ = grid_batch(sizes, 6, fill=30.0)
    adj = adj + (~mask).float().unsqueeze(1)  # edges into the padding: must be dropped
    Y = torch.tensor([1, 0, 1])
    with torch.no_grad():
        _, losses = model.compute_loss(Y, X, adj, mask.to(torch.uint8))
        assert set(losses) == LOSS_KEYS and all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
        alone = [model.compute_loss(Y[b : b + 1], X[b : b + 1, :n], adj[b : b + 1, :n, :n])[1]
                 for b, n in enumerate(sizes)]
    for key in ("MinCutLoss", "OrthoLoss"):  # batch means of per-bag values
        assert abs(float(losses[key]) - float(np.mean([float(a[key]) for a in alone]))) <= 1e-5
    assert -1.0 - 1e-5 <= float(losses["MinCutLoss"]) <= 0.0 and float(losses["OrthoLoss"]) >= 0.0
    assert float(alone[2]["MinCutLoss"]) == 0.0  # one instance, no edges: 0, not 0 / 0


def test_all_masked_row_is_finite():
    model = build().eval()
    X, adj, mask, _, _ = grid_batch([5, 4], 6)
    mask[1] = False
    with torch.no_grad():
        logits, att = model(X, adj, mask, return_att=True)
        _, losses = model.compute_loss(torch.tensor([0, 1]), X, adj, mask)
    assert torch.isfinite(logits).all() and torch.isfinite(att).all() and bool((att[1] == 0).all())
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("n_classes", [1, 3])
def test_attention_is_the_cluster_attention_mapped_to_instances_and_a_distribution(n_classes):
    model = build(n_classes).eval()
    X, adj, mask, _, _ = grid_batch([15, 8, 1], 6)
    with torch.no_grad():
        logits, att = model(X, adj, mask, return_att=True)
        # the same map by hand, from the full encoder's weights
        H = model.gcn_conv(X, adj, mask)
        S = model.cluster_proj(H)
        assign = torch.softmax(S, -1) * mask.unsqueeze(-1)
        tokens = torch.cat([model.cls_token.expand(3, 1, 6), assign.transpose(1, 2) @ H], dim=1)
        Z, weights = model.transformer_encoder(tokens, return_att=True)
        cluster_att = weights[-1][:, :, 0, 1:].mean(1)  # (B, K)
        expected = (assign @ cluster_att.unsqueeze(-1)).squeeze(-1)
        expected = expected / expected.sum(1, keepdim=True)
        want_logits = model.classifier(Z[:, 0])
    assert torch.allclose(att, expected, atol=1e-6)
    assert torch.allclose(logits.reshape(3, -1), want_logits, atol=1e-5)
    assert bool((att[mask] > 0).all()) and bool((att[~mask] == 0).all())
    assert torch.allclose(att.sum(1), torch.ones(3), atol=1e-6)
    assert float(att[0].max() - att[0].min()) > 1e-4  # not the uniform map
    assert torch.equal(model.deployment_attention(att, mask), att.float() / att.float().sum(1, keepdim=True))


@pytest.mark.parametrize("n_classes", [1, 3])
def test_padding_dense_sparse_and_edge_list_agree_after_training(n_classes):
    model = build(n_classes)
    X, adj, mask, _, _ = grid_batch([12, 7, 3], 6)
    Y = torch.tensor([0, 1, 2]) % max(n_classes, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        optimizer.zero_grad()
        _, losses = model.compute_loss(Y, X, adj, mask)
        sum(losses.values()).backward()
        optimizer.step()
    model.eval()
    sizes = [30, 2]  # never trained on
    X2, adj2, mask2, edge_index2, edge_weight2 = grid_batch(sizes, 6, seed=4, fill=9.0)
    with torch.no_grad():
        want = model(X2, adj2, mask2, return_att=True)
        assert torch.equal(want[1], model(X2, adj2, mask2, return_att=True)[1])  # eval is deterministic
        for got in (
            model(X2, adj2.to_sparse(), mask2.to(torch.uint8), return_att=True),
            model(X2, mask=mask2, edge_index=edge_index2, edge_weight=edge_weight2, return_att=True),
            model.predict(X2, mask=mask2, edge_index=edge_index2, edge_weight=edge_weight2),
        ):
            assert (got[0] - want[0]).abs().max() <= 1e-5 and (got[1] - want[1]).abs().max() <= 1e-5
        for b, n in enumerate(sizes):
            alone = model(X2[b : b + 1, :n], adj2[b : b + 1, :n, :n], return_att=True)
            assert (alone[0][0] - want[0][b]).abs().max() <= 1e-5
            assert (alone[1][0] - want[1][b, :n]).abs().max() <= 1e-5


@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_scripts_and_exports_an_edge_list_onnx_that_matches_at_other_sizes(tmp_path):
    model = build().eval()
    X, adj, mask, edge_index, edge_weight = grid_batch([16, 11], 6)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        want = model(X, adj, mask, return_att=True)
        got = scripted(X, mask=mask, return_att=True, edge_index=edge_index, edge_weight=edge_weight)
    assert (got[0] - want[0]).abs().max() <= 1e-5 and (got[1] - want[1]).abs().max() <= 1e-5

    class Wrapper(torch.nn.Module):
        def __init__(self, model: GTP) -> None:
            super().__init__()
            self.model = model

        def forward(self, features, mask, edge_index, edge_weight):
            logits, att = self.model(features, mask=mask, return_att=True, edge_index=edge_index,
                                     edge_weight=edge_weight)
            return logits, self.model.deployment_attention(att, mask)

    B, N, E = (torch.export.Dim(name, min=2) for name in ("B", "N", "E"))
    path = tmp_path / "gtp.onnx"
    torch.onnx.export(
        Wrapper(model).eval(), (X, mask, edge_index, edge_weight), str(path), dynamo=True,
        dynamic_shapes=({0: B, 1: N}, {0: B, 1: N}, {0: B, 2: E}, {0: B, 1: E}),
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    X2, _, mask2, edge_index2, edge_weight2 = grid_batch([40, 5, 23], 6, seed=9)
    logits, att = session.run(None, {"features": X2.numpy(), "mask": mask2.numpy(),
                                     "edge_index": edge_index2.numpy(), "edge_weight": edge_weight2.numpy()})
    with torch.no_grad():
        want_logits, want_att = Wrapper(model)(X2, mask2, edge_index2, edge_weight2)
    assert np.abs(logits - want_logits.numpy()).max() <= 1e-4 and np.abs(att - want_att.numpy()).max() <= 1e-4
