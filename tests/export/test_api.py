"""export_checkpoint: rebuild, export, verify, then place; failures and interrupts leave nothing behind."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from milsdk.errors import CheckpointError, ExportError, VerificationError
from milsdk.export import api
from milsdk.export.api import default_name, export_checkpoint
from milsdk.export.triton import check_triton_model
from milsdk.export.verify import VerificationPlan

QUICK = VerificationPlan.quick()


def _tree(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_export_with_triton(abmil_ckpt, tmp_path):
    messages = []
    result = export_checkpoint(
        abmil_ckpt[1], tmp_path / "out", triton_repo=tmp_path / "repo", plan=QUICK, progress=messages.append
    )
    assert _tree(tmp_path / "out") == ["model.onnx", "model.pt", "verification.json", "verification.md"]
    assert _tree(tmp_path / "repo") == [
        "abmil1",
        "abmil1/1",
        "abmil1/1/model.onnx",
        "abmil1/1/verification.json",
        "abmil1/1/verification.md",
        "abmil1/config.pbtxt",
    ]
    assert result.name == "abmil1" and result.triton_dir == tmp_path / "repo" / "abmil1"
    assert [a.format for a in result.artifacts] == ["onnx", "torchscript"]
    assert all(a.path.parent == tmp_path / "out" and a.report.passed for a in result.artifacts)
    assert result.info.class_names == ["normal", "tumor"] and result.info.extra["metadata"] == {
        "feature_extractor": "UNI"
    }
    report = json.loads((tmp_path / "out" / "verification.json").read_text())
    assert report["passed"] and [a["artifact"] for a in report["artifacts"]] == ["model.onnx", "model.pt"]
    assert check_triton_model(result.triton_dir) == []
    table = result.table()
    assert table.splitlines()[0].split() == ["artifact", "size", "parity", "err", "padding", "err", "time"]
    assert str(tmp_path / "out" / "model.onnx") in table and "MB" in table
    assert messages[0].startswith(f"read {abmil_ckpt[1]}: ABMIL, D=1024") and any(
        m.startswith("verifying model.pt") for m in messages
    )


def test_python_backend_profile_multiclass(abmil_ckpt, tmp_path):
    result = export_checkpoint(
        abmil_ckpt[3],
        tmp_path / "out",
        triton_repo=tmp_path / "repo",
        name="abmil_py",
        version=3,
        profile="triton-python",
        max_batch_size=4,
        plan=QUICK,
    )
    assert _tree(tmp_path / "out") == ["model.onnx", "verification.json", "verification.md"]
    assert (result.triton_dir / "3" / "model.py").is_file() and result.info.n_classes == 3
    assert "max_batch_size: 4" in (result.triton_dir / "config.pbtxt").read_text()
    assert check_triton_model(result.triton_dir) == []


def _tampering_export_onnx(export_onnx):
    def export(model, path, **kwargs):
        export_onnx(model, path, **kwargs)
        proto = onnx.load(path)
        weight = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
        array = onnx.numpy_helper.to_array(weight) + np.float32(0.05)
        weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
        onnx.save(proto, path)
        return path

    return export


def test_failed_verification_writes_nothing(abmil_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(api, "export_onnx", _tampering_export_onnx(api.export_onnx))
    with pytest.raises(
        VerificationError, match=r"nothing written, model.onnx: verification FAILED parity"
    ) as info:
        export_checkpoint(
            abmil_ckpt[1], tmp_path / "exports" / "out", triton_repo=tmp_path / "repo", plan=QUICK
        )
    reports = info.value.report
    assert [r.artifact for r in reports] == ["model.onnx", "model.pt"]
    assert not reports[0].passed and reports[1].passed and reports[0].parity_error > 1e-4
    assert list(tmp_path.iterdir()) == []


def test_interrupted_export_writes_nothing(abmil_ckpt, tmp_path):
    def interrupt(message):
        if message.startswith("verifying model.pt"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_checkpoint(
            abmil_ckpt[1], tmp_path / "out", triton_repo=tmp_path / "repo", plan=QUICK, progress=interrupt
        )
    assert list(tmp_path.iterdir()) == []


def test_bad_checkpoints_write_nothing(abmil, tmp_path):
    out = tmp_path / "out"
    torch.save(abmil[1].state_dict(), tmp_path / "weights.ckpt")
    (tmp_path / "corrupt.ckpt").write_bytes(b"not a checkpoint at all")
    cases = {"missing.ckpt": "no such file", "weights.ckpt": "bare state_dict", "corrupt.ckpt": "corrupt"}
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=message):
            export_checkpoint(tmp_path / name, out, triton_repo=tmp_path / "repo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.ckpt", "weights.ckpt"]


def test_option_errors_come_first(abmil_ckpt, tmp_path):
    with pytest.raises(ExportError, match="needs the torchscript format"):
        export_checkpoint(
            abmil_ckpt[1],
            tmp_path / "out",
            ["onnx"],
            triton_repo=tmp_path / "r",
            profile=_pytorch_profile(tmp_path),
        )
    with pytest.raises(ExportError, match="unknown format 'tflite'"):
        export_checkpoint(abmil_ckpt[1], tmp_path / "out", ["tflite"])
    with pytest.raises(ExportError, match="may use only letters"):
        export_checkpoint(abmil_ckpt[1], tmp_path / "out", name="a/b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pytorch.toml"]


def _pytorch_profile(tmp_path):
    path = tmp_path / "pytorch.toml"
    path.write_text('[triton]\nbackend = "pytorch"\n')
    return path


def test_reexport_replaces_its_files_only(abmil_ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "model.onnx").write_text("stale")
    export_checkpoint(abmil_ckpt[1], out, ["onnx"], plan=QUICK)
    assert (out / "notes.txt").read_text() == "keep me"
    assert onnx.load(out / "model.onnx").graph.input[0].name == "features"
    assert not [p for p in tmp_path.rglob(".*")]


def test_default_name():
    assert default_name("runs/ABMIL Camelyon-16.ckpt") == "abmil_camelyon-16"
    assert default_name("___.ckpt") == "model"
