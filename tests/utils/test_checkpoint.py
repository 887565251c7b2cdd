import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import milsdk
from milsdk.errors import CheckpointError
from milsdk.models import ABMIL
from milsdk.utils import read_checkpoint
from milsdk.utils.checkpoint import _read_legacy, legacy_loader_is_safe


def test_round_trip_same_outputs_config_and_metadata(tmp_path):
    torch.manual_seed(0)
    model = ABMIL(in_shape=(12,), att_dim=16, gated=True, n_classes=3).eval()
    path = milsdk.save_checkpoint(model, tmp_path / "m.ckpt", class_names=["a", "b", "c"], threshold=0.4)
    loaded = milsdk.load_checkpoint(path)
    X = torch.randn(3, 7, 12)
    assert torch.equal(model(X), loaded(X))
    assert not loaded.training
    assert loaded.config["gated"] is True and loaded.n_classes == 3
    assert loaded.checkpoint_metadata == {"class_names": ["a", "b", "c"], "threshold": 0.4}


def test_round_trip_keeps_criterion_arguments(tmp_path):
    model = ABMIL(in_shape=(4,), criterion=torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([3.0])))
    loaded = milsdk.load_checkpoint(milsdk.save_checkpoint(model, tmp_path / "m.ckpt"))
    assert torch.equal(loaded.criterion.pos_weight, torch.tensor([3.0]))


def test_lazy_model_saved_after_running(tmp_path):
    model = ABMIL()
    with pytest.raises(CheckpointError, match="has not run yet"):
        milsdk.save_checkpoint(model, tmp_path / "m.ckpt")
    X = torch.randn(1, 3, 9)
    model.eval()(X)
    loaded = milsdk.load_checkpoint(milsdk.save_checkpoint(model, tmp_path / "m.ckpt"))
    assert loaded.in_shape == (9,) and torch.equal(loaded(X), model(X))


def test_custom_feature_extractor_refused_at_save(tmp_path):
    model = ABMIL(in_shape=(4,), feat_ext=torch.nn.Linear(4, 2))
    with pytest.raises(CheckpointError, match="'config.feat_ext' is a Linear module"):
        milsdk.save_checkpoint(model, tmp_path / "m.ckpt")
    assert not (tmp_path / "m.ckpt").exists()


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/milsdk_pwned",))


def test_file_is_safetensors_with_a_json_header_and_no_pickle(tmp_path):
    model = ABMIL(in_shape=(6,), n_classes=3)
    path = milsdk.save_checkpoint(model, tmp_path / "m.ckpt", class_names=["a", "b", "c"], threshold=0.5)
    raw = path.read_bytes()
    assert raw[8:9] == b"{" and not raw.startswith(b"PK")  # a safetensors JSON header, no torch.save zip
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        keys = set(f.keys())
    assert header["format"] == "milsdk.checkpoint" and header["format_version"] == "2"
    assert header["model_name"] == "ABMIL"
    assert json.loads(header["config"])["n_classes"] == 3
    assert json.loads(header["metadata"]) == {"class_names": ["a", "b", "c"], "threshold": 0.5}
    assert keys == set(model.state_dict())
    assert [p.name for p in tmp_path.iterdir()] == ["m.ckpt"]  # no temporary file left


def test_header_length_starting_like_a_pickle_is_still_read(tmp_path):
    # the 8-byte header length can begin with any byte, 0x80 (a pickle's first byte) included
    model = ABMIL(in_shape=(3,))
    for k in range(256):
        path = milsdk.save_checkpoint(model, tmp_path / "m.ckpt", note="x" * k)
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert milsdk.load_checkpoint(path).checkpoint_metadata["note"] == "x" * k


def _legacy_payload(model, **metadata):
    """A version-1 checkpoint as milsdk <= 0.x wrote it: torch.save of plain data."""
    from milsdk.utils.checkpoint import _encode

    return {"format": "milsdk.checkpoint", "format_version": 1, "model_name": type(model).model_name,
            "config": _encode(model.config, "config"), "metadata": metadata,
            "state_dict": dict(model.state_dict()), "milsdk_version": "0.1.0", "torch_version": "2.13.0"}


def test_version_1_torch_save_files_are_still_read(tmp_path):
    torch.manual_seed(0)
    model = ABMIL(in_shape=(5,), n_classes=2).eval()
    torch.save(_legacy_payload(model, class_names=["x", "y"]), tmp_path / "old.ckpt")
    loaded = milsdk.load_checkpoint(tmp_path / "old.ckpt")
    X = torch.randn(2, 4, 5)
    assert torch.equal(loaded(X), model(X)) and loaded.checkpoint_metadata == {"class_names": ["x", "y"]}


@pytest.mark.parametrize(
    "version, safe",
    [("2.13.0+cpu", True), ("2.10.0", True), ("2.10.1+cu128", True), ("2.9.1", False), ("2.6.0+cu124", False),
     ("2.5.1", False), ("2.10.0a0+git1234", False), ("not a version", False)],
)
def test_legacy_loader_needs_a_torch_without_the_weights_only_cves(version, safe):
    assert legacy_loader_is_safe(version) is safe


def test_version_1_file_is_refused_on_a_torch_with_known_loader_cves(tmp_path):
    path = tmp_path / "old.ckpt"
    torch.save(_legacy_payload(ABMIL(in_shape=(3,))), path)
    with pytest.raises(CheckpointError, match=r"refused: it is a pickle-based .* torch 2\.9\.1.*CVE-2026-24747") as exc:
        _read_legacy(path, "2.9.1")
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)
    assert _read_legacy(path, "2.10.0")["model_name"] == "ABMIL"


def test_truncated_and_foreign_safetensors_files(tmp_path):
    path = milsdk.save_checkpoint(ABMIL(in_shape=(8,)), tmp_path / "m.ckpt")
    raw = path.read_bytes()
    for cut in (4, 20, len(raw) // 2, len(raw) - 1):
        (tmp_path / "cut.ckpt").write_bytes(raw[:cut])
        with pytest.raises(CheckpointError, match="corrupt or not a checkpoint file") as exc:
            read_checkpoint(tmp_path / "cut.ckpt")
        assert "\n" not in str(exc.value) and "cut.ckpt" in str(exc.value)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(CheckpointError, match="not a milsdk checkpoint.*bare safetensors weights"):
        read_checkpoint(tmp_path / "weights.safetensors")


def test_class_names_that_do_not_fit_the_model_are_refused_at_load(tmp_path):
    model = ABMIL(in_shape=(4,))  # binary: two names
    path = milsdk.save_checkpoint(model, tmp_path / "m.ckpt", class_names=["a", "b", "c"])
    with pytest.raises(CheckpointError, match=r"m\.ckpt: metadata class_names has 3 names .*binary model needs 2"):
        milsdk.load_checkpoint(path)


def test_checkpoint_with_code_running_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"format": "milsdk.checkpoint", "format_version": 1, "payload": _RunsCode()}, path)
    with pytest.raises(CheckpointError, match=r"refused: .*posix.system") as exc:
        milsdk.load_checkpoint(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a checkpoint at all", "corrupt or not a checkpoint file"),
        (b"PK\x03\x04 truncated zip", "corrupt or not a checkpoint file"),
        (b"", "corrupt or not a checkpoint file"),
    ],
)
def test_corrupt_files_are_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as exc:
        milsdk.load_checkpoint(path)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_missing_foreign_and_newer_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        milsdk.load_checkpoint(tmp_path / "missing.ckpt")
    torch.save(ABMIL(in_shape=(3,)).state_dict(), tmp_path / "sd.pth")
    with pytest.raises(CheckpointError, match="bare state_dict"):
        read_checkpoint(tmp_path / "sd.pth")
    torch.save({"format": "milsdk.checkpoint", "format_version": 99}, tmp_path / "new.ckpt")
    with pytest.raises(CheckpointError, match="newer than this milsdk reads"):
        read_checkpoint(tmp_path / "new.ckpt")


def test_weights_that_do_not_fit_are_reported(tmp_path):
    path = milsdk.save_checkpoint(ABMIL(in_shape=(4,)), tmp_path / "m.ckpt")
    with safe_open(str(path), framework="pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    header["config"] = json.dumps({**json.loads(header["config"]), "in_shape": [5]})
    save_file(tensors, str(path), metadata=header)
    with pytest.raises(CheckpointError, match="weights do not fit the model"):
        milsdk.load_checkpoint(path)
