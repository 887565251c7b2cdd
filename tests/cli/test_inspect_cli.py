"""`milsdk inspect`: inputs, outputs, symbolic dims, dynamic axes and metadata of .onnx / .pt; one-line
errors."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from click.testing import CliRunner

from milsdk.cli import main
from milsdk.export.onnx import export_onnx
from milsdk.export.signature import model_info
from milsdk.export.torchscript import export_torchscript
from milsdk.models import ABMIL


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    torch.manual_seed(0)
    model = ABMIL(in_shape=(1024,), n_classes=3).eval()
    info = model_info(model, {"class_names": ["a", "b", "c"]})
    out = tmp_path_factory.mktemp("inspect")
    return {
        "onnx": export_onnx(model, out / "m.onnx", info=info),
        "pt": export_torchscript(model, out / "m.pt", info=info),
    }


def _inspect(*args):
    return CliRunner().invoke(main, ["inspect", *map(str, args)])


def test_inspect_onnx(artifacts):
    result = _inspect(artifacts["onnx"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "(onnx, " in out and "opset 18" in out
    assert "features: float32 [batch, n_instances, 1024]" in out and "mask: bool [batch, n_instances]" in out
    assert "logits: float32 [batch, 3]" in out and "attention: float32 [batch, n_instances]" in out
    assert "dynamic axes: features: 0=batch, 1=n_instances" in out
    assert "model: ABMIL  D=1024  classes=3 (softmax)  names=['a', 'b', 'c']" in out
    assert "padding invariant: yes" in out


def test_inspect_torchscript_json(artifacts):
    result = _inspect(artifacts["pt"], "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["format"] == "torchscript"
    assert [(i["name"], i["shape"]) for i in data["inputs"]] == [
        ("features", ["batch", "n_instances", 1024]),
        ("mask", ["batch", "n_instances"]),
    ]
    assert data["dynamic_axes"]["attention"] == {"0": "batch", "1": "n_instances"}
    assert data["metadata"]["class_names"] == ["a", "b", "c"]
    assert data["metadata"]["extra"]["export"]["method"] in ("script", "trace")


def test_files_without_milsdk_metadata(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), tmp_path / "plain.onnx")
    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.pt")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x01junk")
    expected = {
        "plain.onnx": "no milsdk metadata",
        "weights.pt": "no milsdk metadata",
        "junk.onnx": "not a readable ONNX model",
        "missing.pt": "no such file",
        "model.h5": "no such file",
    }
    for name, message in expected.items():
        result = _inspect(tmp_path / name)
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert (
            len(lines) == 1 and lines[0].startswith(f"Error: {tmp_path / name}: ") and message in lines[0]
        ), lines
    (tmp_path / "model.h5").write_bytes(b"")
    assert "unknown artifact type '.h5'" in _inspect(tmp_path / "model.h5").output


_BLOCKER = """
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, Block())
from milsdk.cli import main
try:
    main(ARGS)
except SystemExit as exit:
    code = exit.code or 0
assert not any(m.split(".")[0] in BLOCKED for m in sys.modules), sorted(sys.modules)
sys.exit(code)
"""


@pytest.mark.parametrize("blocked", [("torch",), ("torch", "onnx", "onnxscript")])
def test_inspect_onnx_in_a_client_only_install(artifacts, tmp_path, blocked):
    """A client install (numpy + onnxruntime + tritonclient + h5py) has no torch and maybe no onnx package:
    inspect reads the same facts through onnxruntime and prints the same description."""
    import subprocess
    import sys

    def run(*args):
        code = f"BLOCKED = {blocked!r}\nARGS = {list(map(str, args))!r}\n" + _BLOCKER
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)

    for extra in ([], ["--json"]):
        done = run("inspect", artifacts["onnx"], *extra)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout == _inspect(artifacts["onnx"], *extra).output
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x01junk")
    done = run("inspect", tmp_path / "junk.onnx")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"Error: {tmp_path / 'junk.onnx'}: not a readable ONNX model")
