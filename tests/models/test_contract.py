"""The model contract, checked for every registered model (as timm's tests check every registered model).

Each model class declares ``test_config`` (a small constructor configuration) and ``test_n_classes`` beside its
code; this suite builds it with ``in_shape=(D,)`` and checks: training lowers the loss, eval is deterministic, a
bag's logits and attention do not depend on the other bags or on its padding (bool and uint8 masks), all-masked
rows and one-instance bags are finite, the checkpoint round trip is exact, ONNX and TorchScript exports pass
verification at sizes unlike the export example, and ``MILClient.from_path`` on each artifact equals eager
PyTorch on each bag alone. A new model needs no edit here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from milsdk.contract import COORDS, EDGE_INDEX, EDGE_WEIGHT, FEATURES, MASK
from milsdk.export.artifact import read_model_info
from milsdk.export.signature import DeploymentModule
from milsdk.export.verify import Tolerances, VerificationPlan, verify_export
from milsdk.models import MILModel, get_model_class, list_models
import milsdk.nn.linear as linear_module
from milsdk.nn.linear import MIN_BFLOAT16_OUTPUTS, Bfloat16Linear
from milsdk.serving import MILClient
from milsdk.serving.planner import pad_batch
from milsdk.utils.graph import coords_graph
from milsdk.utils.checkpoint import load_checkpoint, save_checkpoint

#: feature width; the integration suite uses the same, so that both check (and export once) the same artifacts
D = 12
CASES = [
    pytest.param(name, c, id=f"{name}-C{c}")
    for name in list_models()
    for c in get_model_class(name).test_n_classes
]
FORMATS = ("onnx", "torchscript")
#: verification at sizes unlike the export example (batch 2, 16 instances): batches 1..3, bags 1..40.
PLAN = VerificationPlan.quick()


def build(name: str, n_classes: int, seed: int = 0) -> MILModel:
    """The registered model ``name`` in its declared test configuration."""
    cls = get_model_class(name)
    torch.manual_seed(seed)
    return cls(in_shape=(D,), n_classes=n_classes, **cls.test_config)


def grid_coords(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) float32 distinct integer grid positions of a roughly square patch grid, shifted by an offset."""
    side = int(np.ceil(np.sqrt(n))) + 1
    cells = rng.permutation(side * side)[:n]
    offset = rng.integers(0, 50, size=2)
    return np.stack([cells // side, cells % side], axis=1).astype(np.float32) + offset


def make_bags(sizes: list[int], seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Bags {features (n, D), coords (n, 2), edge_index (2, E), edge_weight (E,)} of the given sizes; the edges
    are the 8-neighbour graph of the coords (what the client builds from coords)."""
    rng = np.random.default_rng(seed)
    bags = []
    for n in sizes:
        coords = grid_coords(n, rng)
        edge_index, edge_weight = coords_graph(coords)
        bags.append(
            {
                FEATURES: rng.standard_normal((n, D)).astype(np.float32),
                COORDS: coords,
                EDGE_INDEX: edge_index,
                EDGE_WEIGHT: edge_weight,
            }
        )
    return bags


def batch(
    bags: list[dict[str, np.ndarray]], n: int | None = None, fill: float = 0.0, mask_dtype=torch.bool
) -> dict[str, torch.Tensor]:
    """Pad bags to ``n`` instances (default the largest), padding filled with ``fill`` (features and coords).

    Returns X, mask, coords, the dense adjacency ``adj`` (B, n, n) (the training form, as collate_fn gives it)
    and the padded edge list ``edge_index`` / ``edge_weight`` (the serving form, as the client pads it).
    """
    n = n or max(len(b[FEATURES]) for b in bags)
    X = torch.full((len(bags), n, D), fill)
    coords = torch.full((len(bags), n, 2), fill)
    mask = torch.zeros(len(bags), n, dtype=mask_dtype)
    adj = torch.zeros(len(bags), n, n)
    for i, b in enumerate(bags):
        k = len(b[FEATURES])
        X[i, :k] = torch.from_numpy(b[FEATURES])
        coords[i, :k] = torch.from_numpy(b[COORDS])
        mask[i, :k] = 1
        rows, cols = torch.from_numpy(b[EDGE_INDEX])
        adj[i, rows, cols] = torch.from_numpy(b[EDGE_WEIGHT])
    edges = pad_batch(bags, n, [FEATURES, EDGE_INDEX, EDGE_WEIGHT])
    return {
        "X": X,
        "mask": mask,
        "coords": coords,
        "adj": adj,
        EDGE_INDEX: torch.from_numpy(edges[EDGE_INDEX]),
        EDGE_WEIGHT: torch.from_numpy(edges[EDGE_WEIGHT]),
    }


def extra_kwargs(model: MILModel, inputs: dict[str, torch.Tensor], graph: str = "adj") -> dict[str, torch.Tensor]:
    """The extra forward inputs the model declares, from a batch: ``coords``; for graph models the dense ``adj``
    (``graph="adj"``, the training form) or the edge list (``graph="edges"``, the serving form)."""
    out = {key: inputs[key] for key in model.extra_inputs if key != "adj"}
    if "adj" in model.extra_inputs:
        if graph == "adj":
            out["adj"] = inputs["adj"]
        elif graph == "sparse":
            out["adj"] = inputs["adj"].to_sparse()
        else:
            out[EDGE_INDEX], out[EDGE_WEIGHT] = inputs[EDGE_INDEX], inputs[EDGE_WEIGHT]
    return out


def deploy(
    module: DeploymentModule | torch.jit.ScriptModule, inputs: dict[str, torch.Tensor],
    input_names: list[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The deployment signature on a batch: (logits (B, C), attention (B, N)); a scripted module needs the
    ``input_names`` of the module it was scripted from."""
    args = {FEATURES: inputs["X"], MASK: inputs["mask"].bool(), COORDS: inputs["coords"],
            EDGE_INDEX: inputs[EDGE_INDEX], EDGE_WEIGHT: inputs[EDGE_WEIGHT]}
    with torch.no_grad():
        return module(*[args[name] for name in (input_names or module.input_names)])


def run(model: MILModel, inputs: dict[str, torch.Tensor], graph: str = "adj") -> tuple[torch.Tensor, torch.Tensor]:
    """Eager forward with attention, no grad."""
    with torch.no_grad():
        return model(inputs["X"], mask=inputs["mask"], return_att=True, **extra_kwargs(model, inputs, graph))


def synthetic_task(
    n_classes: int, n_bags: int = 8, seed: int = 1
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Bags whose label c shows as a shift of feature c in a few instances (class 0: no shift)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 20, size=n_bags).tolist()
    bags = make_bags(sizes, seed)
    labels = np.arange(n_bags) % max(n_classes, 2)
    for bag, y in zip(bags, labels):
        if y > 0:
            bag[FEATURES][: max(1, len(bag[FEATURES]) // 3), y] += 3.0
    return batch(bags), torch.from_numpy(labels)


def takes_graph(model: MILModel) -> bool:
    """Whether the model uses a graph: in forward (``extra_inputs``) or only in its training loss (a
    ``compute_loss`` argument named ``adj``, which the Trainer routes by name)."""
    return "adj" in model.extra_inputs or "adj" in inspect.signature(model.compute_loss).parameters


def loss_kwargs(model: MILModel, inputs: dict[str, torch.Tensor], graph: str = "adj") -> dict[str, torch.Tensor]:
    """What the Trainer passes to compute_loss besides Y, X and mask: the extra inputs, and the graph when the
    loss takes one."""
    kwargs = extra_kwargs(model, inputs, graph)
    if "adj" not in model.extra_inputs and takes_graph(model):
        kwargs.update(extra_kwargs(_WithGraph, inputs, graph))
    return kwargs


class _WithGraph:
    extra_inputs = ("adj",)


def total_loss(
    model: MILModel, inputs: dict[str, torch.Tensor], Y: torch.Tensor, graph: str = "adj"
) -> torch.Tensor:
    _, losses = model.compute_loss(Y, inputs["X"], mask=inputs["mask"], **loss_kwargs(model, inputs, graph))
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses
    return sum(losses.values())


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


@pytest.mark.parametrize("name,n_classes", CASES)
def test_declares_a_test_configuration_and_is_registered(name, n_classes):
    cls = get_model_class(name)
    assert issubclass(cls, MILModel) and cls.model_name == name
    assert isinstance(cls.test_config, dict) and "in_shape" not in cls.test_config
    model = build(name, n_classes)
    assert model.n_outputs == n_classes and model.in_shape == (D,)
    assert set(model.extra_inputs) <= {"coords", "adj"}
    assert model.attention_output in ("logits", "weights")


@pytest.mark.parametrize("name,n_classes", CASES)
def test_a_few_adam_steps_lower_the_loss(name, n_classes):
    model = build(name, n_classes)
    inputs, Y = synthetic_task(n_classes)
    model.eval()
    with torch.no_grad():
        before = float(total_loss(model, inputs, Y))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(15):
        optimizer.zero_grad()
        total_loss(model, inputs, Y).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = float(total_loss(model, inputs, Y))
    assert after < before, f"{name}: loss {before:.4f} -> {after:.4f}"


@pytest.mark.parametrize("name,n_classes", CASES)
def test_eval_is_deterministic_and_outputs_have_the_contract_shapes(name, n_classes):
    model = build(name, n_classes).eval()
    inputs = batch(make_bags([7, 3, 12]))
    logits, att = run(model, inputs)
    again_logits, again_att = run(model, inputs)
    assert torch.equal(logits, again_logits) and torch.equal(att, again_att)
    assert logits.shape == ((3,) if n_classes == 1 else (3, n_classes)) and att.shape == (3, 12)
    assert torch.equal(model.predict(inputs["X"], mask=inputs["mask"], **extra_kwargs(model, inputs))[0], logits)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.uint8], ids=["bool", "uint8"])
@pytest.mark.parametrize("name,n_classes", CASES)
def test_a_bag_does_not_depend_on_its_padding_or_the_other_bags(name, n_classes, mask_dtype):
    model = build(name, n_classes).eval()
    bags = make_bags([1, 5, 13, 30], seed=3)
    padded = batch(bags, n=41, fill=7.5, mask_dtype=mask_dtype)  # padding holds garbage, not zeros
    logits, att = run(model, padded)
    dep = DeploymentModule(model)
    _, dep_att = deploy(dep, padded)
    for i, bag in enumerate(bags):
        alone = batch([bag])
        alone_logits, alone_att = run(model, alone)
        k = len(bag[FEATURES])
        assert max_diff(alone_logits[0], logits[i]) <= 1e-5, f"bag {i}: logits depend on padding"
        assert max_diff(alone_att[0], att[i, :k]) <= 1e-5, f"bag {i}: attention depends on padding"
        _, alone_dep = deploy(dep, alone)
        assert max_diff(alone_dep[0], dep_att[i, :k]) <= 1e-5
        assert bool((dep_att[i, k:] == 0).all())
        assert abs(float(dep_att[i, :k].double().sum()) - 1) <= 1e-5 and bool((dep_att[i, :k] >= 0).all())


GRAPH_CASES = [case for case in CASES if takes_graph(build(*case.values))]


@pytest.mark.parametrize("name,n_classes", GRAPH_CASES)
def test_a_graph_model_gives_the_same_outputs_from_dense_sparse_adj_and_the_edge_list(name, n_classes):
    """After 20 training steps, on bags whose sizes the other tests do not use: dense (B, N, N) adj (the
    training form), sparse adj and the padded edge list (the serving form) give the same outputs and the same
    eval losses (<= 1e-5)."""
    model = build(name, n_classes)
    train_inputs, Y = synthetic_task(n_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(20):
        optimizer.zero_grad()
        total_loss(model, train_inputs, Y).backward()
        optimizer.step()
    model.eval()
    inputs = batch(make_bags([2, 23, 11, 1], seed=9), n=29)
    dense_logits, dense_att = run(model, inputs, graph="adj")
    Y = torch.tensor([0, 1, 0, 1]) % max(n_classes, 2)
    with torch.no_grad():
        dense_loss = total_loss(model, inputs, Y, graph="adj")
    for graph in ("sparse", "edges"):
        logits, att = run(model, inputs, graph=graph)
        assert max_diff(logits, dense_logits) <= 1e-5 and max_diff(att, dense_att) <= 1e-5, graph
        with torch.no_grad():
            assert max_diff(total_loss(model, inputs, Y, graph=graph), dense_loss) <= 1e-5, graph


@pytest.mark.parametrize("name,n_classes", CASES)
def test_all_masked_row_and_one_instance_bag_are_finite(name, n_classes):
    model = build(name, n_classes).eval()
    bags = make_bags([1, 6, 4], seed=5)
    inputs = batch(bags)
    inputs["mask"][2] = False  # a row with no real instance (its edges stay: the model must drop them)
    logits, att = run(model, inputs)
    assert torch.isfinite(logits).all() and torch.isfinite(att).all()
    alone_logits, alone_att = run(model, batch(bags[:2]))
    assert max_diff(alone_logits, logits[:2]) <= 1e-5
    one_logits, one_att = run(model, batch(bags[:1]))
    assert torch.isfinite(one_logits).all() and torch.isfinite(one_att).all()
    one = model.deployment_attention(one_att, torch.ones(1, 1, dtype=torch.bool))
    assert float(one[0, 0]) == pytest.approx(1.0)


@pytest.mark.parametrize("name,n_classes", CASES)
def test_checkpoint_round_trip_gives_the_same_outputs(name, n_classes, tmp_path):
    model = build(name, n_classes)
    inputs, Y = synthetic_task(n_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):  # trained weights, not just the initialisation
        optimizer.zero_grad()
        total_loss(model, inputs, Y).backward()
        optimizer.step()
    model.eval()
    path = save_checkpoint(model, tmp_path / f"{name}.ckpt", class_names=None)
    loaded = load_checkpoint(path)
    assert type(loaded) is type(model) and not loaded.training
    want_logits, want_att = run(model, inputs)
    got_logits, got_att = run(loaded, inputs)
    assert torch.equal(got_logits, want_logits) and torch.equal(got_att, want_att)


@pytest.mark.parametrize("min_outputs", [MIN_BFLOAT16_OUTPUTS, 1], ids=["wide-layers", "every-layer"])
@pytest.mark.parametrize("name,n_classes", CASES)
def test_bfloat16_deployment_scripts_and_stays_within_bfloat16_tolerance_of_float32(
    name, n_classes, min_outputs, monkeypatch
):
    # "every-layer": the test configurations' layers are narrow; converting all of them checks that each model
    # runs (and scripts) with bfloat16 weights wherever a real-size model would have them
    monkeypatch.setattr(linear_module, "MIN_BFLOAT16_OUTPUTS", min_outputs)
    model = build(name, n_classes).eval()
    inputs = batch(make_bags([7, 3, 12, 40], seed=5))
    want_logits, want_att = deploy(DeploymentModule(model), inputs)
    module = DeploymentModule(model, "bfloat16")
    # every nn.Linear of the copy but the narrow ones is a Bfloat16Linear; the model itself is left as it was
    wide = sum(type(m) is torch.nn.Linear and m.out_features >= min_outputs for m in model.modules())
    assert sum(isinstance(m, Bfloat16Linear) for m in module.modules()) == wide and (wide or min_outputs > 1)
    assert not any(type(m) is torch.nn.Linear and m.out_features >= min_outputs for m in module.modules())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    logits, att = deploy(module, inputs)
    tol = Tolerances.for_precision("bfloat16")
    for got, want in ((logits, want_logits), (att, want_att)):
        assert got.dtype == torch.float32
        excess = (got - want).abs() - (tol.parity_atol + tol.parity_rtol * want.abs())
        assert float(excess.max()) <= 0, f"{name}: beyond bfloat16's tolerance by {float(excess.max()):.3g}"
    mask = inputs["mask"].bool()
    torch.testing.assert_close(att.sum(1), torch.ones(4), atol=tol.attention_sum, rtol=0)
    assert torch.all(att[~mask] == 0)
    scripted_logits, scripted_att = deploy(torch.jit.script(module), inputs, module.input_names)
    torch.testing.assert_close(scripted_logits, logits, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(scripted_att, att, atol=1e-6, rtol=1e-6)


@pytest.fixture(scope="module")
def exported(registered_export) -> Callable[[str, int], tuple[MILModel, dict[str, Path]]]:
    """``get(name, n_classes)``: the model as :func:`build` makes it, in eval mode, and its artifacts
    {format: path}, exported once per session (the integration suite serves the same files)."""

    def get(name: str, n_classes: int) -> tuple[MILModel, dict[str, Path]]:
        paths = {fmt: registered_export(name, n_classes, fmt, D)[1] for fmt in FORMATS}
        return registered_export(name, n_classes, "onnx", D)[0], paths

    return get


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name,n_classes", CASES)
def test_export_passes_verification_at_sizes_unlike_the_example(name, n_classes, fmt, exported):
    model, paths = exported(name, n_classes)
    report = verify_export(paths[fmt], model, plan=PLAN)
    assert report.passed, report.summary()
    assert report.parity_error is not None and report.parity_error <= 1e-4
    assert report.check("attention_scan").passed
    if fmt == "torchscript":  # scripted, so that shape arithmetic stays symbolic (tracing is only a fallback)
        assert read_model_info(paths[fmt]).extra["export"]["method"] == "script"
    else:  # onnxruntime's multi-threaded ScatterND races on duplicate indices: scatter_add_rows, never index_add
        assert "ScatterND" not in {node.op_type for node in onnx.load(paths[fmt]).graph.node}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name,n_classes", CASES)
def test_client_on_the_artifact_equals_eager_on_each_bag_alone(name, n_classes, fmt, exported):
    model, paths = exported(name, n_classes)
    bags = make_bags([1, 2, 9, 17, 64, 5, 33], seed=11)
    dep = DeploymentModule(model)
    with MILClient.from_path(paths[fmt], max_instances=96) as client:
        # features and coords only, as in a feature file: the client builds a graph model's edges from coords
        preds = client.predict([{FEATURES: b[FEATURES], COORDS: b[COORDS]} for b in bags])
    assert client.last_run.requests < len(bags) or not model.padding_invariant  # bags were packed together
    for bag, pred in zip(bags, preds):
        assert pred.ok, pred.error
        want_logits, want_att = deploy(dep, batch([bag]))
        np.testing.assert_allclose(pred.logits, want_logits[0].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(pred.attention, want_att[0].numpy(), atol=1e-4, rtol=0)
