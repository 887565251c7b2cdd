"""The in-graph NaN/inf test of each bag (``features_check``): where it reads, that it is exact, and what the
client does with it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from milsdk.contract import FEATURES_CHECK
from milsdk.export import export_onnx
from milsdk.serving import MILClient
from milsdk.serving.backends.features_check import FIRST_LAYER, WHOLE_FEATURES, attach_features_check
from milsdk.serving.backends.onnxruntime import OnnxRuntimeBackend

from .conftest import D


@pytest.fixture(scope="module")
def abmil_int8(abmil_model, tmp_path_factory):
    return export_onnx(abmil_model, tmp_path_factory.mktemp("int8") / "model.onnx", precision="int8")


@pytest.fixture(scope="module")
def abmil_wire16(abmil_model, tmp_path_factory):
    return export_onnx(abmil_model, tmp_path_factory.mktemp("f16") / "model.onnx", features_dtype="float16")


def _checked_session(path) -> tuple[ort.InferenceSession, str]:
    proto = onnx.load(str(path))
    where = attach_features_check(proto)
    onnx.checker.check_model(proto)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]), where


def _check(session, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    return session.run([FEATURES_CHECK], {"features": features.astype(dtype), "mask": mask})[0]


@pytest.mark.parametrize("artifact, reads", [
    ("abmil_onnx", FIRST_LAYER), ("abmil_wire16", FIRST_LAYER), ("abmil_int8", WHOLE_FEATURES),
])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_bad_value_makes_only_its_own_bags_check_non_finite(request, artifact, reads, value):
    session, where = _checked_session(request.getfixturevalue(artifact))
    assert where == reads
    rng = np.random.default_rng(0)
    features = rng.normal(size=(3, 9, D)).astype(np.float32)
    mask = np.ones((3, 9), bool)
    mask[2, 6:] = False
    features[2, 6:] = 0.0  # padding, as the client writes it
    check = _check(session, features, mask)
    assert check.shape == (3,) and check.dtype == np.float32 and np.isfinite(check).all()
    for bag, row, col in [(0, 0, 0), (1, 8, D - 1), (2, 5, 7)]:
        bad = features.copy()
        bad[bag, row, col] = value
        check = _check(session, bad, mask)
        assert [bool(np.isfinite(c)) for c in check] == [b != bag for b in range(3)]


def test_the_first_layer_sum_is_the_sum_of_the_first_matmul(abmil_model, abmil_onnx):
    import torch

    session, _ = _checked_session(abmil_onnx)
    features = np.random.default_rng(1).normal(size=(2, 7, D)).astype(np.float32)
    check = _check(session, features, np.ones((2, 7), bool))
    weight = next(m for m in abmil_model.modules() if isinstance(m, torch.nn.Linear)).weight.detach().numpy()
    expected = (features.astype(np.float64) @ weight.T.astype(np.float64)).sum(axis=(1, 2))
    np.testing.assert_allclose(check, expected, rtol=1e-4, atol=1e-3)


def _graph(first_op: str, opset: int) -> onnx.ModelProto:
    """features (B, N, 4) -> first_op -> MatMul W (4, 2) -> logits (B, 2) by a ReduceSum over N."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 2], np.arange(8, dtype=np.float32).tolist())
    axis = helper.make_tensor("axis", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node(first_op, ["features"], ["x"]),
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("ReduceSum", ["h", "axis"], ["logits"], keepdims=0) if opset >= 13
        else helper.make_node("ReduceSum", ["h"], ["logits"], axes=[1], keepdims=0),
        helper.make_node("Cast", ["mask"], ["attention"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", "n_instances", 4]),
         helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", "n_instances"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2]),
         helper.make_tensor_value_info("attention", TensorProto.FLOAT, ["batch", "n_instances"])],
        initializer=[w, axis] if opset >= 13 else [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("first_op, reads", [("Identity", FIRST_LAYER), ("Relu", WHOLE_FEATURES)])
@pytest.mark.parametrize("opset", [12, 18])
def test_what_the_check_reads_and_both_reducesum_forms(first_op, reads, opset):
    proto = _graph(first_op, opset)
    assert attach_features_check(proto) == reads
    onnx.checker.check_model(proto)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    features = np.ones((2, 3, 4), np.float32)
    features[1, 2, 0] = -np.inf  # a ReLU would zero it: a check after the ReLU could not see it
    check = _check(session, features, np.ones((2, 3), bool))
    assert np.isfinite(check[0]) and not np.isfinite(check[1])


@pytest.mark.parametrize("opset", [12, 18])
def test_the_column_form_holds_the_same_sums_as_batch_by_one(opset):
    plain, column = _graph("Identity", opset), _graph("Identity", opset)
    attach_features_check(plain)
    attach_features_check(column, column=True)
    onnx.checker.check_model(column)
    dims = [d.dim_param or d.dim_value for d in column.graph.output[-1].type.tensor_type.shape.dim]
    assert dims == ["batch", 1]
    features = np.random.default_rng(2).normal(size=(3, 5, 4)).astype(np.float32)
    features[2, 1, 3] = np.nan
    mask = np.ones((3, 5), bool)
    sums = [_check(ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]), features, mask)
            for p in (plain, column)]
    assert sums[1].shape == (3, 1)
    np.testing.assert_array_equal(sums[1][:, 0], sums[0])
    assert np.isfinite(sums[1][:2]).all() and np.isnan(sums[1][2, 0])


def test_a_graph_with_the_output_already_is_refused():
    proto = _graph("Identity", 18)
    attach_features_check(proto)
    with pytest.raises(ValueError, match="already has"):
        attach_features_check(proto)


def test_the_artifact_on_disk_keeps_its_signature(abmil_onnx):
    before = abmil_onnx.read_bytes()
    backend = OnnxRuntimeBackend(abmil_onnx)
    assert backend.checks_features
    assert abmil_onnx.read_bytes() == before
    assert [o.name for o in onnx.load(str(abmil_onnx)).graph.output] == ["logits", "attention"]
    assert not OnnxRuntimeBackend(abmil_onnx, features_check=False).checks_features


class _NoScan:
    """Replaces the client's pre-run scan: fails the test if it is called on a bag's features (the outputs of a
    bag whose check overflowed are still looked at)."""

    def __call__(self, array):
        from milsdk.serving.client import nonfinite_count

        if array.ndim == 2 and array.shape[-1] == D:
            raise AssertionError("the client scanned a bag before the run")
        return nonfinite_count(array) == 0


def _bags(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, D)).astype(np.float32) for n in sizes]


@pytest.mark.parametrize("artifact", ["abmil_onnx", "abmil_int8"])
def test_the_client_trusts_the_graph_and_still_names_the_bad_bag(request, artifact, monkeypatch):
    path = request.getfixturevalue(artifact)
    bags = _bags([5, 9, 7, 3])
    bad = bags[1].copy()
    bad[4, 2], bad[6, 0] = np.nan, np.inf
    alone = MILClient.from_path(path, max_instances=64).predict([b for i, b in enumerate(bags) if i != 1])
    monkeypatch.setattr("milsdk.serving.client.all_finite", _NoScan())
    client = MILClient.from_path(path, max_instances=64)  # every bag fits in one padded request
    preds = client.predict([bags[0], bad, bags[2], bags[3]])
    assert [p.ok for p in preds] == [True, False, True, True]
    assert preds[1].error == "features hold 2 NaN/inf values"
    # the good bags were run again without the bad one: the int8 graph quantises a batch with one scale
    for pred, ref in zip([preds[0], preds[2], preds[3]], alone):
        np.testing.assert_array_equal(pred.logits, ref.logits)
        np.testing.assert_array_equal(pred.attention, ref.attention)
    assert client.last_run.bags == 4 and client.last_run.failed == 1


def test_finite_features_whose_check_overflows_are_accepted(abmil_onnx, monkeypatch):
    huge = np.full((30, D), 3e38, np.float32)  # finite, but the first layer's products overflow float32
    backend = OnnxRuntimeBackend(abmil_onnx)
    check = backend.run({"features": huge[None], "mask": np.ones((1, 30), bool)})[FEATURES_CHECK]
    assert not np.isfinite(check[0])  # a false alarm ...
    monkeypatch.setattr("milsdk.serving.client.all_finite", _NoScan())
    logits, attention = (backend.run({"features": huge[None], "mask": np.ones((1, 30), bool)})[k]
                         for k in ("logits", "attention"))
    pred = MILClient(backend).predict([huge])[0]
    # ... that the exact count clears: not a features error; the outputs decide
    if np.isfinite(logits).all() and np.isfinite(attention).all():
        assert pred.ok
    else:
        assert pred.error == "the model returned NaN/inf for this bag"


def test_a_bag_past_float16s_range_on_a_float16_model_gets_an_error_and_the_others_answer(abmil_wire16):
    """Finite float32 values past float16's range become inf on the way into a float16-features model: the
    bag's check overflows although its features are finite, its outputs are not finite, and it gets an error;
    the other bags of its batch are answered."""
    good = _bags([6, 4, 5], seed=5)
    beyond = good[1].copy()
    beyond[2, 3] = 1e6
    client = MILClient.from_path(abmil_wire16, max_instances=64)
    assert client.backend.checks_features
    preds = client.predict([good[0], beyond, good[2]])
    alone = client.predict([good[0], good[2]])
    assert [p.ok for p in preds] == [True, False, True]
    assert preds[1].error == "the model returned NaN/inf for this bag"
    for pred, ref in zip([preds[0], preds[2]], alone):
        np.testing.assert_allclose(pred.logits, ref.logits, atol=1e-6)
