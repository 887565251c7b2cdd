"""What is special to CAMIL (the rest is the registry-driven contract suite): the mask reaches the Nyström
layer, the neighbour attention uses only the graph's edges, the n_landmarks default works, dense adj = sparse
adj = edge list after training, TorchScript and an ONNX edge-list export at other sizes; the torchmil options
(local_attention / landmarks) stay padding-invariant and scriptable (their ONNX export is verified on a
converted checkpoint in test_from_torchmil.py)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from milsdk.errors import ModelConfigError
from milsdk.models import CAMIL, create_model
from milsdk.nn.adjacency import edge_list_from_adj
from milsdk.utils.graph import build_adj

JIT_DEPRECATED = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
SMALL = CAMIL.test_config


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


def test_reference_defaults_and_the_n_landmarks_default_works():
    model = create_model("CAMIL", in_shape=(8,))
    cfg = model.config
    assert cfg["nystrom_att_dim"] == 512 and cfg["pool_att_dim"] == 128 and cfg["n_heads"] == 4
    assert cfg["n_landmarks"] is None and model.n_landmarks == 256  # the reference crashes on None
    small = CAMIL(in_shape=(8,), nystrom_att_dim=16, n_heads=2)
    assert small.nystrom_transformer_layer.att.n_landmarks == 8
    X, adj, mask, _, _ = grid_batch([9, 4], 8)
    logits = small(X, adj, mask)
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    assert CAMIL.extra_inputs == ("adj",) and CAMIL.attention_output == "logits"


def test_the_mask_reaches_the_nystrom_layer(monkeypatch):
    model = CAMIL(in_shape=(6,), **SMALL).eval()
    seen = []
    layer = model.nystrom_transformer_layer
    original = layer.forward_att
    monkeypatch.setattr(layer, "forward_att", lambda X, mask=None: seen.append(mask) or original(X, mask))
    X, adj, mask, _, _ = grid_batch([7, 3], 6)
    model(X, adj, mask)
    assert len(seen) == 1 and torch.equal(seen[0], mask)


@pytest.mark.parametrize("n_classes", [1, 3])
def test_padding_with_garbage_changes_nothing(n_classes):
    # More instances than landmarks: without the mask, padded tokens would enter the landmarks.
    torch.manual_seed(0)
    model = CAMIL(in_shape=(6,), n_classes=n_classes, **SMALL).eval()
    sizes = [20, 9, 1]
    X, adj, mask, _, _ = grid_batch(sizes, 6, fill=50.0)
    adj = adj + (~mask).float().unsqueeze(1)  # edges from every node to the padding: must be dropped
    with torch.no_grad():
        logits, att = model(X, adj, mask.to(torch.uint8), return_att=True)
        for b, n in enumerate(sizes):
            alone_logits, alone_att = model(X[b : b + 1, :n], adj[b : b + 1, :n, :n], return_att=True)
            assert (logits[b] - alone_logits[0]).abs().max() <= 1e-5
            assert (att[b, :n] - alone_att[0]).abs().max() <= 1e-5


def test_the_neighbour_attention_uses_only_the_graphs_edges():
    # A hand-made graph: 0 ~ 1, 2 ~ 3, node 4 isolated. The local context L of node 4 is 0, so its mixed
    # vector is T / 2; moving edges changes the logits, an edge of weight 0 is no edge.
    torch.manual_seed(0)
    model = CAMIL(in_shape=(6,), **SMALL).eval()
    X = torch.randn(1, 5, 6)
    edge_index = torch.tensor([[[0, 1, 2, 3], [1, 0, 3, 2]]])
    with torch.no_grad():
        T, _ = model.nystrom_transformer_layer.forward_att(model.fc1(X))
        L = model.neighbour_attention(T, edge_index=edge_index)
        assert bool((L[0, 4] == 0).all())
        base = model(X, edge_index=edge_index)
        dead = torch.tensor([[[0, 1, 2, 3, 4, 0], [1, 0, 3, 2, 0, 4]]])
        same = model(X, edge_index=dead, edge_weight=torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 0.0]]))
        moved = model(X, edge_index=torch.tensor([[[0, 4, 2, 3], [4, 0, 3, 2]]]))
    assert torch.equal(base, same)
    assert not torch.allclose(base, moved)


@pytest.mark.parametrize("n_classes", [1, 3])
def test_dense_sparse_and_edge_list_agree_after_training(n_classes):
    torch.manual_seed(0)
    model = CAMIL(in_shape=(6,), n_classes=n_classes, **SMALL)
    X, adj, mask, edge_index, edge_weight = grid_batch([12, 7, 3], 6)
    Y = torch.tensor([0, 1, 2]) % max(n_classes, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        optimizer.zero_grad()
        _, losses = model.compute_loss(Y, X, adj, mask)
        assert set(losses) == {model.criterion.__class__.__name__}
        sum(losses.values()).backward()
        optimizer.step()
    model.eval()
    X2, adj2, mask2, edge_index2, edge_weight2 = grid_batch([30, 2], 6, seed=4)  # sizes never trained on
    with torch.no_grad():
        want = model(X2, adj2, mask2, return_att=True)
        for got in (
            model(X2, adj2.to_sparse(), mask2, return_att=True),
            model(X2, mask=mask2, edge_index=edge_index2, edge_weight=edge_weight2, return_att=True),
            model.predict(X2, mask=mask2, edge_index=edge_index2, edge_weight=edge_weight2),
        ):
            assert (got[0] - want[0]).abs().max() <= 1e-5 and (got[1] - want[1]).abs().max() <= 1e-5


@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_scripts_and_exports_an_edge_list_onnx_that_matches_at_other_sizes(tmp_path):
    torch.manual_seed(0)
    model = CAMIL(in_shape=(6,), **SMALL).eval()
    X, adj, mask, edge_index, edge_weight = grid_batch([16, 11], 6)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        want = model(X, adj, mask, return_att=True)
        got = scripted(X, mask=mask, return_att=True, edge_index=edge_index, edge_weight=edge_weight)
    assert (got[0] - want[0]).abs().max() <= 1e-5

    class Wrapper(torch.nn.Module):
        def __init__(self, model: CAMIL) -> None:
            super().__init__()
            self.model = model

        def forward(self, features, mask, edge_index, edge_weight):
            logits, att = self.model(features, mask=mask, return_att=True, edge_index=edge_index,
                                     edge_weight=edge_weight)
            return logits, self.model.deployment_attention(att, mask)

    B, N, E = (torch.export.Dim(name, min=2) for name in ("B", "N", "E"))
    path = tmp_path / "camil.onnx"
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


TORCHMIL = {"local_attention": "torchmil", "landmarks": "torchmil"}


@pytest.mark.parametrize("landmarks", ["segments", "torchmil"])
@pytest.mark.parametrize("n_classes", [1, 3])
def test_torchmil_local_attention_with_padding_and_garbage_changes_nothing(landmarks, n_classes):
    torch.manual_seed(0)
    model = CAMIL(in_shape=(6,), n_classes=n_classes, local_attention="torchmil", landmarks=landmarks,
                  **SMALL).eval()
    assert model.neighbour_attention is None and model.camil_self_attention is not None
    assert not any(k.startswith("neighbour_attention.") for k in model.state_dict())
    sizes = [20, 9, 1]
    X, adj, mask, _, _ = grid_batch(sizes, 6, fill=50.0)
    adj = adj + (~mask).float().unsqueeze(1)  # edges from every node to the padding: must be dropped
    empty = torch.zeros(1, 4, dtype=torch.bool)  # an all-masked bag: finite, and it changes nothing else
    with torch.no_grad():
        logits, att = model(X, adj, mask.to(torch.uint8), return_att=True)
        none, _ = model(X[:1, :4], adj[:1, :4, :4], empty, return_att=True)
        for b, n in enumerate(sizes):
            alone_logits, alone_att = model(X[b : b + 1, :n], adj[b : b + 1, :n, :n], return_att=True)
            assert (logits[b] - alone_logits[0]).abs().max() <= 1e-5
            assert (att[b, :n] - alone_att[0]).abs().max() <= 1e-5
    assert torch.isfinite(none).all()


def test_torchmil_local_attention_gates_each_instance_by_its_summed_edge_scores():
    # L_i = softmax_i(w) v_i with w_i = sum_j a_ij q_i.k_j / sqrt(d): an isolated node keeps w = 0 but still
    # takes part in the softmax; its L is its own value scaled, not 0 as in the neighbour attention.
    torch.manual_seed(0)
    model = CAMIL(in_shape=(6,), local_attention="torchmil", **SMALL).eval()
    X = torch.randn(1, 5, 6)
    edge_index = torch.tensor([[[0, 1, 2, 3], [1, 0, 3, 2]]])
    with torch.no_grad():
        T, _ = model.nystrom_transformer_layer.forward_att(model.fc1(X))
        block = model.camil_self_attention
        L, s = block(T, edge_index=edge_index, return_att=True)
        q, k = block.qk(T).chunk(2, dim=-1)
        w = torch.zeros(1, 5)
        for i, j in edge_index[0].T.tolist():
            w[0, i] += (q[0, i] @ k[0, j]) / SMALL["nystrom_att_dim"] ** 0.5
    torch.testing.assert_close(s, torch.softmax(w, dim=1), atol=1e-6, rtol=0)
    torch.testing.assert_close(L, torch.softmax(w, dim=1).unsqueeze(-1) * block.v(T), atol=1e-6, rtol=0)
    assert bool((L[0, 4] != 0).any())


def test_unknown_options_are_refused_in_one_line():
    with pytest.raises(ModelConfigError, match="CAMIL: local_attention='dense', expected one of"):
        CAMIL(in_shape=(6,), local_attention="dense", **SMALL)
    with pytest.raises(ModelConfigError, match="CAMIL: landmarks='means', expected one of"):
        CAMIL(in_shape=(6,), landmarks="means", **SMALL)


@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_torchmil_options_script_and_match_eager_on_an_edge_list_batch():
    # ONNX export + verification of these options: test_from_torchmil's converted-checkpoint export test.
    torch.manual_seed(0)
    model = CAMIL(in_shape=(6,), **TORCHMIL, **SMALL).eval()
    X, adj, mask, edge_index, edge_weight = grid_batch([16, 11, 1], 6)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        want = model(X, adj, mask, return_att=True)
        got = scripted(X, mask=mask, return_att=True, edge_index=edge_index, edge_weight=edge_weight)
    assert (got[0] - want[0]).abs().max() <= 1e-5 and (got[1] - want[1]).abs().max() <= 1e-5
