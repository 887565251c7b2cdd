"""`milsdk convert torchmil`: a torchmil state_dict becomes a checkpoint with torchmil's outputs; pickles are
refused without --trust; errors are one line, exit code 1, nothing written."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

torchmil_models = pytest.importorskip("torchmil.models")

from milsdk.cli import main  # noqa: E402
from milsdk.utils.checkpoint import load_checkpoint  # noqa: E402

D = 32


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    model = torchmil_models.ABMIL(in_shape=(D,), att_dim=16).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, D))
    return model


def _convert(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return CliRunner().invoke(main, ["convert", "torchmil", *args], catch_exceptions=False)


def test_state_dict_converts_to_an_equal_checkpoint(reference, tmp_path, monkeypatch):
    torch.save(reference.state_dict(), tmp_path / "abmil.pth")
    result = _convert(["abmil.pth", "--model", "ABMIL", "--set", "att_dim=16", "--out", "abmil.ckpt"],
                      tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    model = load_checkpoint(tmp_path / "abmil.ckpt")
    X = torch.randn(1, 50, D)
    with torch.no_grad():
        ref_logits, ref_att = reference(X, return_att=True)
        logits, att = model(X, return_att=True)
    torch.testing.assert_close(logits.reshape(-1), ref_logits.reshape(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(att, ref_att.reshape(att.shape), atol=1e-5, rtol=0)


def test_pickled_model_is_refused_without_trust(reference, tmp_path, monkeypatch):
    torch.save(reference, tmp_path / "whole.pth")
    result = _convert(["whole.pth", "--model", "ABMIL", "--set", "att_dim=16", "--out", "m.ckpt"],
                      tmp_path, monkeypatch)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: torchmil checkpoint whole.pth holds pickled objects")
    assert "--trust" in lines[0]
    assert not (tmp_path / "m.ckpt").exists()


def test_pickled_model_is_accepted_with_trust(reference, tmp_path, monkeypatch):
    torch.save(reference, tmp_path / "whole.pth")
    result = _convert(["whole.pth", "--model", "ABMIL", "--set", "att_dim=16", "--out", "m.ckpt", "--trust"],
                      tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    X = torch.randn(1, 9, D)
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(tmp_path / "m.ckpt")(X), reference(X).reshape(-1), atol=1e-5,
                                   rtol=0)


@pytest.mark.parametrize("args, message", [
    (["--set", "att_dim=8"], "Error: torchmil ABMIL: key 'pool.fc1.module.weight' has shape (16, 32), the model "
                             "built from this config expects (8, 32)"),
    (["--set", "att_dim=16", "--set", "no_such=1"], "Error: torchmil ABMIL: cannot build the milsdk model"),
    (["--set", "att_dim"], "--set"),
])
def test_bad_config_is_one_line_and_writes_nothing(reference, tmp_path, monkeypatch, args, message):
    torch.save(reference.state_dict(), tmp_path / "abmil.pth")
    result = _convert(["abmil.pth", "--model", "ABMIL", *args, "--out", "m.ckpt"], tmp_path, monkeypatch)
    assert result.exit_code != 0
    assert message in result.stderr
    if result.exit_code == 1:
        assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "abmil.pth"]


def test_missing_file_and_unknown_model(tmp_path, monkeypatch):
    result = _convert(["nope.pth", "--model", "ABMIL", "--out", "m.ckpt"], tmp_path, monkeypatch)
    assert result.exit_code == 1 and result.stderr.strip() == "Error: torchmil checkpoint nope.pth: no such file"
    torch.save({"w": torch.zeros(1)}, tmp_path / "x.pth")
    result = _convert(["x.pth", "--model", "CLAM_MB", "--out", "m.ckpt"], tmp_path, monkeypatch)
    assert result.exit_code == 1 and "no torchmil conversion for model 'CLAM_MB'" in result.stderr
    assert not (tmp_path / "m.ckpt").exists()


def test_transmil_converts_with_set_options(tmp_path, monkeypatch):
    """TransMIL, the issue's example of a layout torchmil lays out differently: --set gives its config."""
    torch.manual_seed(0)
    reference = torchmil_models.TransMIL(in_shape=(D,), att_dim=16, n_heads=2, n_landmarks=8).eval()
    torch.save(reference.state_dict(), tmp_path / "transmil.pth")
    result = _convert(["transmil.pth", "--model", "TransMIL", "--set", "att_dim=16", "--set", "n_heads=2",
                       "--set", "n_landmarks=8", "--out", "t.ckpt"], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    X = torch.randn(1, 45, D)
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(tmp_path / "t.ckpt")(X), reference(X), atol=1e-5, rtol=0)


def test_config_milsdk_cannot_convert_is_one_line_naming_why(reference, tmp_path, monkeypatch):
    # torchmil's CAMIL default n_landmarks=None crashes in its forward: the trained model's value is required.
    torch.save(reference.state_dict(), tmp_path / "m.pth")
    result = _convert(["m.pth", "--model", "CAMIL", "--out", "m.ckpt"], tmp_path, monkeypatch)
    assert result.exit_code == 1 and not (tmp_path / "m.ckpt").exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: torchmil CAMIL: pass the n_landmarks the model")
