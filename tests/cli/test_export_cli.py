"""`milsdk export`: the table, the Triton model, one-line errors with exit code 1 and nothing written."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from milsdk.cli import main
from milsdk.export import api
from milsdk.export.verify import VerificationPlan
from milsdk.models import ABMIL
from milsdk.utils.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "ABMIL Tumor.ckpt"
    return save_checkpoint(ABMIL(in_shape=(1024,)), path, class_names=["normal", "tumor"])


def _run(args, tmp_path, monkeypatch):
    """Run the command in an empty folder ``tmp_path/cwd``; returns the result and that folder."""
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    return CliRunner().invoke(main, args, catch_exceptions=False), here


def test_help_has_an_example():
    result = CliRunner().invoke(main, ["export", "--help"])
    assert result.exit_code == 0
    assert "milsdk export abmil.ckpt --format onnx --triton model_repository" in result.output
    for option in (
        "--format",
        "--output",
        "--triton",
        "--name",
        "--version",
        "--opset",
        "--max-batch-size",
        "--profile",
    ):
        assert option in result.output


def test_export_onnx_to_default_folder_and_triton(ckpt, tmp_path, monkeypatch):
    args = ["export", str(ckpt), "--format", "onnx", "--triton", "repo", "--version", "2"]
    result, here = _run(args, tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["artifact", "size", "parity"]
    row = lines[1].split()
    assert row[0] == "exports/abmil_tumor/model.onnx" and row[2] == "MB"
    assert float(row[3]) <= 1e-4 and float(row[4]) <= 1e-5  # parity and padding errors
    assert "verification report: exports/abmil_tumor/verification.md" in result.stdout
    assert "[1] read " in result.stderr and "verifying model.onnx" in result.stderr
    assert sorted(p.name for p in (here / "exports" / "abmil_tumor").iterdir()) == [
        "model.onnx",
        "verification.json",
        "verification.md",
    ]
    assert (here / "repo" / "abmil_tumor" / "2" / "model.onnx").is_file()


def _tampering(export_onnx):
    def export(model, path, **kwargs):
        export_onnx(model, path, **kwargs)
        proto = onnx.load(path)
        weight = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
        weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 1.5, weight.name))
        onnx.save(proto, path)
        return path

    return export


def test_failed_verification_exits_1_with_the_numbers(ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(api, "export_onnx", _tampering(api.export_onnx))
    monkeypatch.setattr(VerificationPlan, "default", classmethod(lambda cls: VerificationPlan.quick()))
    args = ["export", str(ckpt), "--format", "onnx", "--output", "out", "--triton", "repo"]
    result, here = _run(args, tmp_path, monkeypatch)
    assert result.exit_code == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: abmil_tumor: nothing written, model.onnx: verification FAILED parity_")
    assert "parity " in error and "padding " in error
    assert list(here.iterdir()) == []


@pytest.mark.parametrize("kind", ["missing", "state_dict", "corrupt", "directory"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, kind):
    torch.save(ABMIL(in_shape=(8,)).state_dict(), tmp_path / "state_dict.ckpt")
    (tmp_path / "corrupt.ckpt").write_bytes(b"\x00garbage")
    (tmp_path / "directory.ckpt").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    result, here = _run(["export", str(tmp_path / f"{kind}.ckpt"), "--triton", "repo"], tmp_path, monkeypatch)
    assert result.exit_code != 0
    output = result.stderr.strip().splitlines()
    assert len(output) == 1 and output[0].startswith("Error:") and f"{kind}.ckpt" in output[0]
    assert list(here.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir() if p != here) == before


def test_bad_profile_is_one_line(ckpt, tmp_path, monkeypatch):
    result, _ = _run(["export", str(ckpt), "--profile", "gpu-fp32"], tmp_path, monkeypatch)
    assert result.exit_code == 1
    assert (
        result.stderr.strip() == "Error: unknown profile 'gpu-fp32'; packaged profiles: cpu, cpu-bf16, cpu-int8, "
        "cpu-int8-vnni, gpu-fp16, triton-python, triton-python-wire16, triton-pytorch (or a .toml path)"
    )


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["-o", "afile"], "Error: output folder afile: is an existing file, not a folder"),
        (["-o", "afile/sub"], "Error: output folder afile/sub: is inside afile, an existing file, not a folder"),
        (["-o", "out", "--triton", "afile"], "Error: Triton repository afile: is an existing file, not a folder"),
    ],
)
def test_target_that_is_a_file_fails_before_any_work_and_writes_nothing(ckpt, tmp_path, monkeypatch, args, error):
    here = tmp_path / "cwd"
    here.mkdir()
    (here / "afile").write_text("mine")
    monkeypatch.chdir(here)
    result = CliRunner().invoke(main, ["export", str(ckpt), "--format", "onnx", *args], catch_exceptions=False)
    assert result.exit_code == 1
    # one line and no progress: the checkpoint was not even read
    assert result.stderr.strip().splitlines() == [error]
    assert [p.name for p in here.iterdir()] == ["afile"] and (here / "afile").read_text() == "mine"
