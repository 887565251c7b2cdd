"""check_external_data: an ONNX file whose external data leaves its folder is refused before onnx or onnxruntime
opens it (load_onnx, the reader of milsdk inspect, calls it first)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from milsdk.errors import ArtifactError
from milsdk.export.onnx_file import load_onnx
from milsdk.utils.onnx_external_data import check_external_data, external_data_locations

N = 64


def _save(folder: Path, location: str = "weights.bin") -> Path:
    """y = x + W + V with W and V (N,) float32 in the external file ``location``, W also used inside an If branch."""
    folder.mkdir(parents=True, exist_ok=True)
    w = numpy_helper.from_array(np.arange(N, dtype=np.float32), "W")
    v = numpy_helper.from_array(np.full(N, 0.5, dtype=np.float32), "V")
    then = helper.make_graph([helper.make_node("Add", ["x", "W"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [N])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [N])])
    nodes = [
        helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True])),
        helper.make_node("If", ["c"], ["z"], then_branch=then, else_branch=other),
        helper.make_node("Add", ["z", "V"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [N])], [w, v])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = folder / "model.onnx"
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location,
                    size_threshold=0)
    return path


def _relocate(path: Path, location: str) -> None:
    """Point every external tensor of ``path`` at ``location`` (what a hostile file would say)."""
    model = onnx.load_model(path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, path)


def test_a_normal_external_data_file_passes_and_runs(tmp_path):
    path = _save(tmp_path / "m")
    assert sorted(external_data_locations(path)) == [("V", "weights.bin"), ("W", "weights.bin")]
    check_external_data(path)
    x = np.ones(N, dtype=np.float32)
    y = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    np.testing.assert_array_equal(y, x + np.arange(N) + 0.5)
    assert load_onnx(path).graph.initializer[0].name == "W"


def test_a_file_without_external_data_has_no_locations(tmp_path):
    path = _save(tmp_path / "m")
    model = onnx.load_model(path)  # weights read back into the file itself
    onnx.save_model(model, tmp_path / "inline.onnx")
    assert external_data_locations(tmp_path / "inline.onnx") == []
    check_external_data(tmp_path / "inline.onnx")


@pytest.mark.parametrize(
    "location, setup, message",
    [
        ("../secret.bin", None, r"'\.\./secret\.bin', which points outside the model's folder"),
        ("sub/../../secret.bin", "subdir", r"'sub/\.\./\.\./secret\.bin', which points outside the model's folder"),
        ("ABSOLUTE", None, r"'/.*secret\.bin', an absolute path outside the model's folder"),
        ("link.bin", "file-link", r"'link\.bin', which passes through the symlink .*link\.bin"),
        ("sub/secret.bin", "folder-link", r"'sub/secret\.bin', which passes through the symlink .*sub$"),
        ("missing.bin", None, r"'missing\.bin', which is not a file in"),
        ("", None, r"'', which is not a file name"),
    ],
)
def test_external_data_outside_the_folder_is_refused(tmp_path, location, setup, message):
    secret = tmp_path / "secret.bin"
    path = _save(tmp_path / "m")
    secret.write_bytes((tmp_path / "m" / "weights.bin").read_bytes())
    if location == "ABSOLUTE":
        location = str(secret)
    if setup == "subdir":
        (tmp_path / "m" / "sub").mkdir()
    elif setup == "file-link":
        os.symlink(secret, tmp_path / "m" / "link.bin")
    elif setup == "folder-link":
        os.symlink(tmp_path, tmp_path / "m" / "sub")
    _relocate(path, location)
    with pytest.raises(ArtifactError, match=r"model\.onnx: refused: tensor '[VW]' keeps its data in " + message) as exc:
        check_external_data(path)
    assert "\n" not in str(exc.value)
    with pytest.raises(ArtifactError, match="refused: tensor"):
        load_onnx(path)  # the onnx package never gets to read the file


def test_external_data_named_inside_a_subgraph_is_checked(tmp_path):
    path = _save(tmp_path / "m")
    model = onnx.load_model(path, load_external_data=False)
    branch = model.graph.node[1].attribute[0].g  # the If's then_branch
    hidden = numpy_helper.from_array(np.zeros(N, dtype=np.float32), "H")
    hidden.data_location = TensorProto.EXTERNAL
    hidden.ClearField("raw_data")
    entry = hidden.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    branch.initializer.append(hidden)
    onnx.save_model(model, path)
    with pytest.raises(ArtifactError, match=r"tensor 'H' keeps its data in '\.\./\.\./etc/passwd'"):
        check_external_data(path)


@pytest.mark.parametrize("content", [b"", b"\x0a\xff\xff\xff\xff\x0f", b"\x0b\x0c"])
def test_malformed_files_are_one_clear_error(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(ArtifactError, match=r"model\.onnx: not a readable ONNX model") as exc:
        check_external_data(path)
    assert "\n" not in str(exc.value)
