"""Triton repository writer: config.pbtxt (read with Triton's schema) checked field by field against the ONNX /
TorchScript artifact, the three backends, versions, and the Python-backend model.py run directly (numpy in, numpy
out)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
import torch

from milsdk.contract import METADATA_KEY
from milsdk.errors import ExportError
from milsdk.export.artifact import read_model_info
from milsdk.export.onnx import onnx_signature
from milsdk.export.pbtxt import model_config_schema
from milsdk.export.profiles import InstanceGroup
from milsdk.export.signature import DeploymentModule
from milsdk.export.triton import (
    check_triton_model,
    python_model_source,
    read_triton_config,
    write_triton_model,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
mc = model_config_schema()


def _write(tmp_path, artifacts, n_classes=1, backend="onnxruntime", **options):
    fmt = "torchscript" if backend == "pytorch" else "onnx"
    path = artifacts[(n_classes, fmt)]
    return write_triton_model(
        tmp_path / "repo", f"abmil{n_classes}", {fmt: path}, read_model_info(path), backend=backend, **options
    )


@pytest.mark.parametrize("n_classes", [1, 3])
def test_onnxruntime_config_field_by_field(abmil_artifacts, tmp_path, n_classes):
    model_dir = _write(tmp_path, abmil_artifacts, n_classes, max_batch_size=6)
    assert sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*")) == [
        "1",
        "1/model.onnx",
        "config.pbtxt",
    ]
    cfg = read_triton_config(model_dir / "config.pbtxt")
    proto = onnx.load(model_dir / "1" / "model.onnx")
    inputs, outputs = onnx_signature(proto)
    assert cfg.name == f"abmil{n_classes}" and cfg.platform == "onnxruntime_onnx" and not cfg.backend
    assert cfg.max_batch_size == 6 and not cfg.HasField("dynamic_batching")
    triton_types = {"float32": mc.TYPE_FP32, "bool": mc.TYPE_BOOL}
    for entries, specs in ((cfg.input, inputs), (cfg.output, outputs)):
        assert [e.name for e in entries] == [s.name for s in specs]
        for entry, spec in zip(entries, specs):
            assert entry.data_type == triton_types[spec.dtype]
            assert spec.shape[0] == "batch"  # implicit in Triton's dims
            assert list(entry.dims) == [-1 if isinstance(d, str) else d for d in spec.shape[1:]]
    assert list(cfg.input[0].dims) == [-1, 1024] and list(cfg.output[0].dims) == [n_classes]
    assert [(g.count, g.kind, list(g.gpus)) for g in cfg.instance_group] == [(1, mc.ModelInstanceGroup.KIND_CPU, [])]
    params = {key: value.string_value for key, value in cfg.parameters.items()}
    assert json.loads(params[METADATA_KEY]) == json.loads(
        read_model_info(model_dir / "1" / "model.onnx").to_json()
    )
    assert params["memory.enable_memory_arena_shrinkage"] == "cpu:0"
    assert check_triton_model(model_dir) == []


@pytest.mark.parametrize("backend", ["onnxruntime", "python"])
def test_the_repository_copy_adds_the_features_check_and_keeps_the_outputs(abmil_artifacts, tmp_path, backend):
    import onnxruntime as ort

    source = abmil_artifacts[(3, "onnx")]
    before = source.read_bytes()
    model_dir = _write(tmp_path, abmil_artifacts, 3, backend=backend)
    assert source.read_bytes() == before  # the verified artifact keeps the deployment signature
    cfg = read_triton_config(model_dir / "config.pbtxt")
    assert [(e.name, list(e.dims)) for e in cfg.output] == [
        ("logits", [3]), ("attention", [-1]), ("features_check", [1])
    ]
    assert cfg.output[2].data_type == mc.TYPE_FP32 and check_triton_model(model_dir) == []
    served, original = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                        for p in (model_dir / "1" / "model.onnx", source))
    rng = np.random.default_rng(3)
    mask = np.arange(40)[None] < np.array([40, 9])[:, None]
    features = (rng.standard_normal((2, 40, 1024)) * mask[..., None]).astype(np.float32)
    features[1, 4, 100] = np.nan
    logits, attention, check = served.run(None, {"features": features, "mask": mask})
    want_logits, want_attention = original.run(None, {"features": features, "mask": mask})
    np.testing.assert_array_equal(logits, want_logits)
    np.testing.assert_array_equal(attention, want_attention)
    assert check.shape == (2, 1) and np.isfinite(check[0, 0]) and not np.isfinite(check[1, 0])


def test_a_torchscript_model_has_no_features_check(abmil_artifacts, tmp_path):
    cfg = read_triton_config(_write(tmp_path, abmil_artifacts, 3, backend="pytorch") / "config.pbtxt")
    assert [e.name for e in cfg.output] == ["logits", "attention"]


def test_gpu_instances_and_dynamic_batching(abmil_artifacts, tmp_path):
    model_dir = _write(
        tmp_path, abmil_artifacts, instance_groups=(InstanceGroup("gpu", 2, (0, 1)),), dynamic_batching=True
    )
    cfg = read_triton_config(model_dir / "config.pbtxt")
    assert [(g.count, g.kind, list(g.gpus)) for g in cfg.instance_group] == [
        (2, mc.ModelInstanceGroup.KIND_GPU, [0, 1])
    ]
    assert cfg.HasField("dynamic_batching")
    params = {key: value.string_value for key, value in cfg.parameters.items()}
    assert params["memory.enable_memory_arena_shrinkage"] == "cpu:0;gpu:0"
    assert check_triton_model(model_dir) == []


def test_pytorch_backend_names_inputs_by_forward_argument(abmil_artifacts, tmp_path):
    model_dir = _write(tmp_path, abmil_artifacts, 3, backend="pytorch", version=2)
    cfg = read_triton_config(model_dir / "config.pbtxt")
    assert cfg.platform == "pytorch_libtorch" and (model_dir / "2" / "model.pt").is_file()
    forward = torch.jit.load(str(model_dir / "2" / "model.pt")).forward.schema
    assert [e.name for e in cfg.input] == [a.name for a in forward.arguments][1:]
    assert [e.name for e in cfg.output] == [
        "logits",
        "attention",
    ]  # config order = forward's tuple order
    assert list(cfg.output[0].dims) == [3] and check_triton_model(model_dir) == []


def test_python_backend_model_runs_the_onnx(abmil, abmil_artifacts, tmp_path):
    model_dir = _write(tmp_path, abmil_artifacts, 3, backend="python")
    version = model_dir / "1"
    cfg = read_triton_config(model_dir / "config.pbtxt")
    assert cfg.backend == "python" and not cfg.platform
    assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "model.py"]
    source = (version / "model.py").read_text()
    assert (
        source == python_model_source()
        and "import torch" not in source
        and "milsdk" not in source.split('"""')[2]
    )
    spec = importlib.util.spec_from_file_location("triton_model_under_test", version / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert hasattr(module.TritonPythonModel, "execute") and module.pb_utils is None
    assert module.providers_for("GPU") == ["CPUExecutionProvider"]  # no CUDA here: CPU fallback
    session = module.create_session(str(version / "model.onnx"))
    # its threads stop spinning after a run: they would take cores from the next work on the host
    assert session.get_session_options().get_session_config_entry("session.force_spinning_stop") == "1"
    rng = np.random.default_rng(0)
    mask = np.arange(60)[None] < np.array([60, 1, 17])[:, None]
    features = (rng.standard_normal((3, 60, 1024)) * mask[..., None]).astype(np.float32)
    out = module.infer(
        session, {"features": features, "mask": mask.astype(np.uint8)}, module.run_options_for(session)
    )
    with torch.no_grad():
        ref = DeploymentModule(abmil[3])(torch.from_numpy(features), torch.from_numpy(mask))
    np.testing.assert_allclose(out["logits"], ref[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(out["attention"], ref[1].numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="missing input 'mask'"):
        module.infer(session, {"features": features})
    assert check_triton_model(model_dir) == []
    # the arenas are released after a batch of at most half the slots they hold, kept after the others
    arena = module.ArenaRelease(session)
    picks = [arena.options_for(np.zeros(shape, np.float32)) for shape in
             [(2, 100, 4), (1, 150, 4), (1, 100, 4), (1, 60, 4), (1, 40, 4), (4, 100, 4)]]
    assert [p is arena.release for p in picks] == [False, False, True, False, True, False]
    assert arena.held_slots == 400


def test_new_version_keeps_the_old_one(abmil_artifacts, tmp_path):
    _write(tmp_path, abmil_artifacts, version=1)
    model_dir = _write(tmp_path, abmil_artifacts, version=2)
    assert (model_dir / "1" / "model.onnx").is_file() and (model_dir / "2" / "model.onnx").is_file()
    assert not [p for p in (tmp_path / "repo").iterdir() if p.name.startswith(".")]


def test_checker_finds_a_mismatch(abmil_artifacts, tmp_path):
    model_dir = _write(tmp_path, abmil_artifacts)
    config = model_dir / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: 1024", "dims: 2048", 1))
    assert check_triton_model(model_dir) == ["input 'features' dims [-1, 2048] != artifact [-1, 1024]"]
    (model_dir / "1" / "model.onnx").unlink()
    assert "1/model.onnx is missing for backend 'onnxruntime'" in check_triton_model(model_dir)


def test_writer_refuses_bad_requests(abmil_artifacts, tmp_path):
    path = abmil_artifacts[(1, "onnx")]
    info = read_model_info(path)
    with pytest.raises(ExportError, match="serves a torchscript artifact"):
        write_triton_model(tmp_path, "m", {"onnx": path}, info, backend="pytorch")
    with pytest.raises(ExportError, match="may use only letters"):
        write_triton_model(tmp_path, "bad name", {"onnx": path}, info)
    with pytest.raises(ExportError, match="version must be >= 1"):
        write_triton_model(tmp_path, "m", {"onnx": path}, info, version=0)
    assert list(tmp_path.iterdir()) == []
