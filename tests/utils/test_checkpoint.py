import os

import pytest
import torch

import milsdk
from milsdk.errors import CheckpointError
from milsdk.models import ABMIL
from milsdk.utils import read_checkpoint


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


def test_checkpoint_with_code_running_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"format": "milsdk.checkpoint", "format_version": 1, "payload": _RunsCode()}, path)
    with pytest.raises(CheckpointError, match=r"refused: .*posix.system") as exc:
        milsdk.load_checkpoint(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a checkpoint at all", "corrupt or not a PyTorch file"),
        (b"PK\x03\x04 truncated zip", "corrupt or not a PyTorch file"),
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
    payload = torch.load(path, weights_only=True)
    payload["config"]["in_shape"] = [5]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="weights do not fit the model"):
        milsdk.load_checkpoint(path)
