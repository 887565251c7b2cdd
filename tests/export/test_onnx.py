"""ONNX export: symbolic batch and bag axes, contract names and dtypes, embedded metadata, parity at sizes
never
seen at export (ABMIL at D=1024, and TransMIL)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from milsdk.contract import METADATA_KEY, ModelInfo
from milsdk.errors import ExportError
from milsdk.export.onnx import check_onnx_signature, export_onnx, onnx_signature, read_onnx_info
from milsdk.export.signature import DeploymentModule, example_inputs, model_info
from milsdk.export.spec import TensorSpec, signature_specs
from milsdk.export.verify import VerificationPlan, verify_export
from milsdk.models import create_model


def _eager(model, features, mask):
    with torch.no_grad():
        logits, attention = DeploymentModule(model)(torch.from_numpy(features), torch.from_numpy(mask))
    return logits.numpy(), attention.numpy()


def _bags(B, N, lengths, D=1024, seed=3):
    rng = np.random.default_rng(seed)
    mask = np.arange(N)[None] < np.asarray(lengths)[:, None]
    features = rng.standard_normal((B, N, D), dtype=np.float32) * mask[..., None]
    return features.astype(np.float32), mask


@pytest.mark.parametrize("n_classes", [1, 3])
def test_dims_are_symbolic_and_named(abmil_artifacts, n_classes):
    proto = onnx.load(abmil_artifacts[(n_classes, "onnx")])
    inputs, outputs = onnx_signature(proto)
    assert inputs == [
        TensorSpec("features", "float32", ("batch", "n_instances", 1024)),
        TensorSpec("mask", "bool", ("batch", "n_instances")),
    ]
    assert outputs == [
        TensorSpec("logits", "float32", ("batch", n_classes)),
        TensorSpec("attention", "float32", ("batch", "n_instances")),
    ]
    assert [o.version for o in proto.opset_import if o.domain == ""] == [18]
    onnx.checker.check_model(proto, full_check=True)


@pytest.mark.parametrize("n_classes", [1, 3])
def test_metadata_is_embedded(abmil, abmil_artifacts, n_classes):
    proto = onnx.load(abmil_artifacts[(n_classes, "onnx")])
    assert [p.key for p in proto.metadata_props].count(METADATA_KEY) == 1
    info = read_onnx_info(proto)
    expected = model_info(abmil[n_classes])
    assert info.extra.pop("export") == {
        "format": "onnx",
        "opset": 18,
        "precision": "float32",
        "features_dtype": "float32",
        "example_sizes": [2, 16],
    }
    assert info == expected


@pytest.mark.parametrize("n_classes", [1, 3])
@pytest.mark.parametrize("B, N, lengths", [(1, 1, [1]), (5, 777, [777, 1, 300, 776, 2]), (8, 33, [33] * 8)])
def test_parity_at_sizes_never_seen_at_export(abmil, abmil_artifacts, n_classes, B, N, lengths):
    session = ort.InferenceSession(
        str(abmil_artifacts[(n_classes, "onnx")]), providers=["CPUExecutionProvider"]
    )
    features, mask = _bags(B, N, lengths)
    logits, attention = session.run(None, {"features": features, "mask": mask})
    ref_logits, ref_attention = _eager(abmil[n_classes], features, mask)
    assert logits.shape == (B, n_classes) and attention.shape == (B, N)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(attention, ref_attention, atol=1e-4, rtol=0)
    assert np.all(attention[~mask] == 0)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_frozen_axis_is_an_export_error(abmil):
    """Exported without dynamic shapes, the bag axis is fixed: the signature check must refuse it."""
    module = DeploymentModule(abmil[1])
    args = example_inputs(module, 2, 16)
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            input_names=module.input_names,
            output_names=["logits", "attention"],
            verbose=False,
            report=False,
        )
    expected = signature_specs(model_info(abmil[1]))
    with pytest.raises(
        ExportError, match=r"input 'features' axis 0 \(batch\) was exported with the fixed size 2"
    ):
        check_onnx_signature(program.model_proto, expected)


def test_opset_and_float16_options(abmil, tmp_path):
    path = export_onnx(abmil[3], tmp_path / "half.onnx", opset=17, precision="float16")
    proto = onnx.load(path)
    assert [o.version for o in proto.opset_import if o.domain == ""] == [17]
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in proto.graph.initializer)
    inputs, outputs = onnx_signature(proto)
    assert [s.dtype for s in inputs + outputs] == [
        "float32",
        "bool",
        "float32",
        "float32",
    ]  # I/O stays float32
    info = read_onnx_info(proto)
    assert info.extra["export"]["precision"] == "float16"
    features, mask = _bags(3, 50, [50, 7, 1])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, attention = session.run(None, {"features": features, "mask": mask})
    ref_logits, ref_attention = _eager(abmil[3], features, mask)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-2, rtol=1e-2)
    np.testing.assert_allclose(attention, ref_attention, atol=1e-2, rtol=1e-2)


def test_bfloat16_is_refused_with_the_reason(abmil, tmp_path):
    # onnxruntime's CPU provider has no bfloat16 MatMul: a bfloat16 graph would fail at load, on the server
    with pytest.raises(ExportError, match="precision bfloat16 is a TorchScript export: onnxruntime's CPU provider "
                       "has no bfloat16 MatMul"):
        export_onnx(abmil[3], tmp_path / "bf16.onnx", precision="bfloat16")
    assert not list(tmp_path.iterdir())


def test_failed_save_leaves_no_file(abmil, tmp_path, monkeypatch):
    def broken_save(proto, path):
        with open(path, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_onnx(abmil[1], tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_transmil_exports_and_verifies(tmp_path):
    """TransMIL's ceil(sqrt(N)) squaring must stay symbolic: parity at bag sizes whose square differs from the
    example's, padding invariance, N=1. At D=1024 with a small token width, 3 classes: the default (binary)
    TransMIL at D=1024 is checked at bags up to 5,000 in tests/models/test_transmil.py, and the contract suite
    verifies both class counts in the test configuration."""
    n_classes = 3
    torch.manual_seed(0)
    model = create_model("TransMIL", in_shape=(1024,), att_dim=64, n_classes=n_classes).eval()
    path = export_onnx(model, tmp_path / "transmil.onnx")
    inputs, outputs = onnx_signature(onnx.load(path))
    assert inputs[0].shape == ("batch", "n_instances", 1024) and outputs[0].shape == ("batch", n_classes)
    plan = VerificationPlan.quick()
    report = verify_export(path, model, plan=plan)
    assert report.passed, report.summary()
    assert report.parity_error <= 1e-4 and report.padding_error <= 1e-5
    assert ModelInfo.from_json(onnx.load(path).metadata_props[0].value).model_name == "TransMIL"


_OLD_RUNTIME_SCRIPT = """
import sys
import numpy as np
import onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
inputs = dict(np.load(sys.argv[2]))
outputs = session.run(["logits", "attention"], inputs)
np.savez(sys.argv[3], logits=outputs[0], attention=outputs[1], version=np.array(ort.__version__))
"""


def test_default_export_has_the_lowest_ir_version_and_runs_in_an_old_onnxruntime(tmp_path):
    """onnxruntime < 1.18 refuses IR 10 ("max supported IR version: 9"); the export must not need it. The old
    runtime lives in its own numpy-1 environment (made by scripts/setup.sh, or here on first use)."""
    import subprocess

    from milsdk.export.onnx import OLDEST_ONNXRUNTIME, lowest_ir_version
    from milsdk.serving.server_env import cache_env_path, ensure_server_env

    torch.manual_seed(0)
    path = export_onnx(create_model("ABMIL", in_shape=(32,), att_dim=8).eval(), tmp_path / "model.onnx")
    proto = onnx.load(path)
    assert proto.ir_version == lowest_ir_version(proto) == 8  # opset 18 needs IR 8
    features, mask = _bags(3, 7, [7, 4, 1], D=32)
    np.savez(tmp_path / "inputs.npz", features=features, mask=mask)

    # the same graph stamped IR 10 gives bit-identical outputs in the current runtime
    newest = tmp_path / "ir10.onnx"
    proto.ir_version = 10
    onnx.save(proto, newest)
    feeds = {"features": features, "mask": mask}
    ours = ort.InferenceSession(str(path)).run(None, feeds)
    for a, b in zip(ours, ort.InferenceSession(str(newest)).run(None, feeds)):
        np.testing.assert_array_equal(a, b)

    python = ensure_server_env(
        cache_env_path(f"onnxruntime-{OLDEST_ONNXRUNTIME}-env"),
        packages=("numpy<2", f"onnxruntime=={OLDEST_ONNXRUNTIME}"),
    )
    done = subprocess.run(
        [str(python), "-c", _OLD_RUNTIME_SCRIPT, str(path), str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    old = np.load(tmp_path / "out.npz")
    assert str(old["version"]) == OLDEST_ONNXRUNTIME
    np.testing.assert_allclose(old["logits"], ours[0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(old["attention"], ours[1], atol=1e-6, rtol=0)


def test_a_graph_model_exports_with_a_dynamic_edge_axis_and_verifies(toys, tmp_path):
    model = toys["graph"]().eval()
    path = export_onnx(model, tmp_path / "graph.onnx")
    inputs, _ = onnx_signature(onnx.load(path))
    assert [(i.name, i.shape) for i in inputs] == [
        ("features", ("batch", "n_instances", 8)),
        ("mask", ("batch", "n_instances")),
        ("edge_index", ("batch", 2, "n_edges")),
        ("edge_weight", ("batch", "n_edges")),
    ]
    report = verify_export(path, model, plan=VerificationPlan.quick())
    assert report.passed, report.summary()
