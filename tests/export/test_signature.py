"""DeploymentModule and model_info: the contract's inputs, outputs and metadata for every model."""

from __future__ import annotations

import copy

import pytest
import torch

from milsdk.contract import ModelInfo
from milsdk.errors import ExportError
from milsdk.export.signature import DeploymentModule, dynamic_shapes, example_inputs, model_info
from milsdk.models import ABMIL


def _batch(B: int, N: int, D: int, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, N, D, generator=gen)
    mask = torch.arange(N)[None] < torch.tensor(lengths)[:, None]
    return x * mask[..., None], mask


@pytest.mark.parametrize("n_classes", [1, 3])
def test_outputs_follow_the_contract(abmil, n_classes):
    model = abmil[n_classes]
    module = DeploymentModule(model)
    x, mask = _batch(3, 7, 1024, [7, 2, 5])
    with torch.no_grad():
        logits, attention = module(x, mask)
        expected = model(x, mask)
    assert logits.shape == (3, n_classes) and logits.dtype == torch.float32
    assert attention.shape == (3, 7) and attention.dtype == torch.float32
    torch.testing.assert_close(logits, expected.reshape(3, n_classes))
    torch.testing.assert_close(attention.sum(1), torch.ones(3))
    assert torch.all(attention[~mask] == 0)
    assert module.input_names == ["features", "mask"]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_coords_models_get_a_coords_input(toys):
    module = DeploymentModule(toys["coords"]().eval())
    assert type(module).__name__ == "_CoordsDeploymentModule" and isinstance(module, DeploymentModule)
    assert module.input_names == ["features", "mask", "coords"]
    features, mask, coords = example_inputs(module, 2, 5)
    logits, attention = module(features, mask, coords)
    assert logits.shape == (2, 1) and attention.shape == (2, 5)
    assert type(copy.deepcopy(module)) is type(module)
    scripted = torch.jit.script(module)
    assert [a.name for a in scripted.forward.schema.arguments][1:] == ["features", "mask", "coords"]


def test_float16_keeps_float32_outputs_and_leaves_the_model_alone(abmil):
    model = abmil[3]
    module = DeploymentModule(model, "float16")
    x, mask = _batch(2, 9, 1024, [9, 4])
    with torch.no_grad():
        logits, attention = module(x, mask)
        ref_logits, ref_attention = DeploymentModule(model)(x, mask)
    assert logits.dtype == attention.dtype == torch.float32
    assert next(model.parameters()).dtype == torch.float32  # the wrapper converted a copy
    assert float((logits - ref_logits).abs().max()) < 1e-2
    assert float((attention - ref_attention).abs().max()) < 1e-2
    assert torch.all(attention[~mask] == 0)


def test_model_info_from_checkpoint_metadata(abmil):
    info = model_info(
        abmil[3], {"class_names": ["a", "b", "c"], "threshold": 0.3, "feature_extractor": "UNI"}
    )
    assert isinstance(info, ModelInfo)
    assert (info.model_name, info.feature_dim, info.n_classes, info.output_activation) == (
        "ABMIL",
        1024,
        3,
        "softmax",
    )
    assert info.class_names == ["a", "b", "c"] and info.threshold == 0.3
    assert info.inputs == ["features", "mask"] and info.padding_invariant is True
    assert info.extra["metadata"] == {"feature_extractor": "UNI"}
    assert ModelInfo.from_json(info.to_json()) == info
    binary = model_info(abmil[1], {"class_names": ["neg", "pos"]})
    assert (binary.n_classes, binary.output_activation, binary.class_names) == (1, "sigmoid", ["neg", "pos"])


def test_model_info_records_declared_padding_variance(toys):
    info = model_info(toys["declared"](in_shape=(16,)))
    assert info.padding_invariant is False and "padded features" in info.padding_note


@pytest.mark.parametrize(
    "build, metadata, message",
    [
        (lambda: ABMIL(in_shape=(16,), n_classes=3), {"class_names": ["a", "b"]}, "class_names has 2 names"),
        (lambda: ABMIL(in_shape=(16,)), {"class_names": ["only"]}, "negative and positive"),
        (lambda: ABMIL(in_shape=None), {}, "input size is unknown"),
        (lambda: torch.nn.Linear(2, 2), {}, "only milsdk MILModel"),
    ],
)
def test_model_info_refuses_what_does_not_fit(build, metadata, message):
    with pytest.raises(ExportError, match=message):
        model_info(build(), metadata)


def test_an_extra_input_without_a_deployment_input_is_refused_with_a_clear_message():
    class NeedsTime(ABMIL):
        extra_inputs = ("time",)

    with pytest.raises(ExportError, match=r"extra inputs \('time',\) have no deployment signature"):
        DeploymentModule(NeedsTime(in_shape=(16,)))


def test_graph_models_take_the_edge_list_and_the_example_holds_edges(toys):
    module = DeploymentModule(toys["graph"]().eval())
    assert module.input_names == ["features", "mask", "edge_index", "edge_weight"]
    features, mask, edge_index, edge_weight = example_inputs(module, batch=3, n_instances=9)
    assert edge_index.dtype == torch.int64 and edge_index.shape[:2] == (3, 2)
    assert edge_weight.shape == (3, edge_index.shape[2]) and edge_weight.dtype == torch.float32
    # the short last bag has fewer edges: its padding edges weigh 0 and no edge reaches its padding
    assert (edge_weight[2] == 0).any() and int(edge_index[2][:, edge_weight[2] != 0].max()) < int(mask[2].sum())
    dims = dynamic_shapes(module)
    assert dims["edge_index"][2] is dims["edge_weight"][1] and dims["edge_index"][0] is dims["features"][0]


def test_size_one_examples_are_refused(abmil):
    with pytest.raises(ExportError, match="specialises"):
        example_inputs(DeploymentModule(abmil[1]), batch=1, n_instances=16)
