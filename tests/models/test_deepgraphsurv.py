"""What is special to DeepGraphSurv (the rest is the registry-driven contract suite): the survival head (Cox loss
lowers on a toy task and ranks bags by risk; the Trainer runs with (B, 2) [time, event] targets and the
C-index), the fixed in_shape=None default, dense adj = edge list after training at unseen sizes (with and
without the power-iteration lambda_max), padding (also with torchmil's term layout), and an ONNX edge-list export
with lambda_max."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tensordict import TensorDict
from torch.utils.data import DataLoader

from milsdk.data import collate_fn
from milsdk.errors import ModelConfigError
from milsdk.export.onnx import export_onnx
from milsdk.models import DeepGraphSurv, create_model
from milsdk.nn.adjacency import edge_list_from_adj
from milsdk.nn.survival import CoxPHLoss
from milsdk.utils import Trainer
from milsdk.utils.graph import bag_adj
from milsdk.utils.metrics import ConcordanceIndex, concordance_index

SMALL = DeepGraphSurv.test_config


def grid_bag(n: int, dim: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One bag on a normalised 8-neighbour grid: X (n, D), dense adj (n, n)."""
    side = int(np.ceil(np.sqrt(n)))
    edge_index, edge_weight = bag_adj(np.stack([np.arange(n) // side, np.arange(n) % side], axis=1))
    adj = torch.zeros(n, n)
    adj[edge_index[0], edge_index[1]] = torch.from_numpy(edge_weight)
    return torch.from_numpy(rng.standard_normal((n, dim)).astype(np.float32)), adj


def grid_batch(sizes: list[int], dim: int, seed: int = 0, fill: float = 0.0):
    """Padded bags: X (B, N, D), dense adj (B, N, N), mask (B, N) bool."""
    rng = np.random.default_rng(seed)
    N = max(sizes)
    X = torch.full((len(sizes), N, dim), fill)
    adj = torch.zeros(len(sizes), N, N)
    mask = torch.zeros(len(sizes), N, dtype=torch.bool)
    for b, n in enumerate(sizes):
        X[b, :n], adj[b, :n, :n] = grid_bag(n, dim, rng)
        mask[b, :n] = True
    return X, adj, mask


def survival_bags(n_bags: int, dim: int = 6, seed: int = 0) -> list[TensorDict]:
    """Bags whose hazard grows with the mean of feature 0: Y = [time, event], ~25% censored."""
    rng = np.random.default_rng(seed)
    bags = []
    for _ in range(n_bags):
        X, adj = grid_bag(int(rng.integers(4, 12)), dim, rng)
        hazard = float(X[:, 0].mean()) * 3.0
        X[:, 0] += hazard
        time = float(rng.exponential(np.exp(-hazard)))
        event = float(rng.random() > 0.25)
        bags.append(TensorDict({"X": X, "adj": adj, "Y": torch.tensor([time, event])}, batch_size=[]))
    return bags


def test_defaults_fixed_and_survival_needs_one_output():
    model = create_model("DeepGraphSurv", in_shape=(10,))
    cfg = model.config
    assert (cfg["n_layers_rep"], cfg["n_layers_att"], cfg["att_dim"], cfg["K"]) == (1, 1, 128, 5)
    assert cfg["compute_lambda_max"] is False and model.layers_rep[0].fc.in_features == 5 * 10
    with pytest.raises(ModelConfigError, match="in_shape or hidden_dim"):
        DeepGraphSurv()  # the reference crashes building ChebConv(None, None)
    lazy = DeepGraphSurv(hidden_dim=8, att_dim=8, K=2)
    X, adj, mask = grid_batch([5, 3], 7)
    assert lazy(X, adj, mask).shape == (2,) and lazy.config["in_shape"] == (7,)
    with pytest.raises(ModelConfigError, match="n_classes=1"):
        DeepGraphSurv((6,), criterion=CoxPHLoss(), n_classes=3)


@pytest.mark.parametrize("compute_lambda_max", [False, True])
@pytest.mark.parametrize("n_classes", [1, 3])
def test_dense_sparse_and_edge_list_agree_after_training_at_unseen_sizes(n_classes, compute_lambda_max):
    torch.manual_seed(0)
    model = DeepGraphSurv((6,), n_classes=n_classes, compute_lambda_max=compute_lambda_max, **SMALL)
    X, adj, mask = grid_batch([9, 4, 7, 12], 6, seed=1)
    Y = torch.tensor([0, 1, 2, 1]) % max(n_classes, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        optimizer.zero_grad()
        sum(model.compute_loss(Y, X, adj, mask)[1].values()).backward()
        optimizer.step()
    model.eval()
    X, adj, mask = grid_batch([23, 1, 31], 6, seed=2, fill=3.0)
    padded_adj = adj + (~mask).float().unsqueeze(1)  # edges into the padding: dropped by the mask
    edge_index, edge_weight = edge_list_from_adj(padded_adj)
    with torch.no_grad():
        want = model(X, padded_adj, mask, return_att=True)
        for got in (model(X, padded_adj.to_sparse(), mask.to(torch.uint8), return_att=True),
                    model(X, mask=mask, return_att=True, edge_index=edge_index, edge_weight=edge_weight),
                    model.predict(X, mask=mask, edge_index=edge_index, edge_weight=edge_weight)):
            for a, b in zip(got, want):
                assert torch.allclose(a, b, atol=1e-5)
        alone = model(X[2:, :31], adj[2:, :31, :31], return_att=True)
    assert torch.allclose(alone[0], want[0][2:], atol=1e-5) and torch.allclose(alone[1], want[1][2:], atol=1e-5)


def test_torchmil_term_layout_is_per_bag_padding_invariant_and_finite_on_an_all_masked_row():
    """term_layout="torchmil" (torchmil's view of the Chebyshev stack, for converted weights) uses each bag's own
    instance count: a bag padded in a batch gives its outputs alone, also through TorchScript."""
    assert DeepGraphSurv((6,), **SMALL).config["term_layout"] == "per_node"
    with pytest.raises(ModelConfigError, match="term_layout must be one of .*got 'view'"):
        DeepGraphSurv((6,), term_layout="view", **SMALL)
    torch.manual_seed(0)
    model = DeepGraphSurv((6,), term_layout="torchmil", n_layers_rep=2, **SMALL).eval()
    per_node = DeepGraphSurv((6,), n_layers_rep=2, **SMALL).eval()
    per_node.load_state_dict(model.state_dict())
    X, adj, mask = grid_batch([23, 1, 31, 4], 6, seed=3, fill=3.0)
    mask[3] = False  # an all-masked row
    edge_index, edge_weight = edge_list_from_adj(adj)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        outputs = [model(X, adj, mask, return_att=True),
                   scripted(X, mask=mask, return_att=True, edge_index=edge_index, edge_weight=edge_weight)]
        for b, n in enumerate([23, 1, 31]):
            alone = model(X[b : b + 1, :n], adj[b : b + 1, :n, :n], return_att=True)
            for logits, f in outputs:
                assert torch.allclose(logits[b], alone[0][0], atol=1e-5)
                assert torch.allclose(f[b, :n], alone[1][0], atol=1e-5)
        assert all(torch.isfinite(t).all() for out in outputs for t in out)
        # the layouts differ once a bag has two instances
        assert (model(X, adj, mask) - per_node(X, adj, mask))[[0, 2]].abs().min() > 1e-4


def test_cox_loss_lowers_on_a_toy_task_and_ranks_bags_by_risk():
    bags = survival_bags(48)
    batch = collate_fn(bags)
    assert batch["Y"].shape == (48, 2)  # per-bag [time, event] rows collate to (B, 2)
    torch.manual_seed(0)
    model = DeepGraphSurv((6,), criterion=CoxPHLoss(), **SMALL)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        risk, loss_dict = model.compute_loss(batch["Y"], batch["X"], batch["adj"].float(), batch["mask"])
        assert set(loss_dict) == {"CoxPHLoss"} and risk.shape == (48,)
        loss_dict["CoxPHLoss"].backward()
        optimizer.step()
        losses.append(float(loss_dict["CoxPHLoss"].detach()))
    assert losses[-1] < losses[0] - 0.2
    model.eval()
    with torch.no_grad():
        risk = model(batch["X"], batch["adj"], batch["mask"])
    assert concordance_index(risk, batch["Y"][:, 0], batch["Y"][:, 1]) > 0.75


def test_trainer_runs_a_survival_model_with_the_c_index():
    torch.manual_seed(0)
    model = DeepGraphSurv((6,), criterion=CoxPHLoss(), **SMALL)
    train = DataLoader(survival_bags(32), batch_size=8, collate_fn=collate_fn)
    val = DataLoader(survival_bags(16, seed=1), batch_size=8, collate_fn=collate_fn)
    trainer = Trainer(model, torch.optim.Adam(model.parameters(), lr=1e-2), device="cpu",
                      metrics_dict={"c_index": ConcordanceIndex()}, obj_metric="c_index",
                      disable_pbar=True, verbose=False)
    history = trainer.train(3, train, val)
    assert len(history) == 3 and {"train/CoxPHLoss", "val/c_index", "train/c_index"} <= set(history[-1])
    assert 0.0 <= history[-1]["val/c_index"] <= 1.0
    assert history[-1]["train/CoxPHLoss"] < history[0]["train/CoxPHLoss"]


def test_onnx_edge_list_export_with_lambda_max_matches_eager_at_other_sizes(tmp_path):
    torch.manual_seed(0)
    model = DeepGraphSurv((6,), compute_lambda_max=True, criterion=CoxPHLoss(), **SMALL).eval()
    path = export_onnx(model, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == ["features", "mask", "edge_index", "edge_weight"]
    for sizes in ([37, 5, 20], [3]):
        X, adj, mask = grid_batch(sizes, 6, seed=len(sizes))
        edge_index, edge_weight = edge_list_from_adj(adj)
        logits, att = session.run(None, {"features": X.numpy(), "mask": mask.numpy(),
                                         "edge_index": edge_index.numpy(), "edge_weight": edge_weight.numpy()})
        with torch.no_grad():
            want_logits, want_f = model(X, adj, mask, return_att=True)
        assert logits.shape == (len(sizes), 1)  # the risk score
        np.testing.assert_allclose(logits[:, 0], want_logits.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(att, model.deployment_attention(want_f, mask).numpy(), atol=1e-4, rtol=0)


def test_a_survival_model_checkpoints_exports_as_risk_and_the_client_returns_the_risk(tmp_path):
    from milsdk.export.onnx import export_onnx
    from milsdk.export.artifact import read_model_info
    from milsdk.nn.survival import CoxPHLoss
    from milsdk.serving import MILClient
    from milsdk.utils.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = DeepGraphSurv(in_shape=(6,), hidden_dim=8, att_dim=8, K=2, criterion=CoxPHLoss()).eval()
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "surv.ckpt"))
    assert isinstance(loaded.criterion, CoxPHLoss)
    path = export_onnx(loaded, tmp_path / "surv.onnx")
    assert read_model_info(path).output_activation == "risk"
    rng = np.random.default_rng(0)
    bag = {"features": rng.normal(size=(9, 6)).astype(np.float32),
           "coords": np.stack([np.arange(9) // 3, np.arange(9) % 3], 1).astype(np.float32)}
    with MILClient.from_path(path) as client:
        pred = client.predict([bag])[0]
    assert pred.ok and pred.label is None and pred.probabilities.tolist() == pred.logits.tolist()
