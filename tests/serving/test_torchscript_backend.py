import numpy as np
import pytest

from milsdk.errors import ArtifactError
from milsdk.serving import MILClient
from milsdk.serving.backends.torchscript import TorchScriptBackend


def test_torchscript_predictions_match_eager_and_onnx(abmil_pt, abmil_onnx, eager, make_bags):
    bags = make_bags([4, 1, 250, 33])
    client = MILClient.from_path(abmil_pt, device="cpu")
    assert isinstance(client.backend, TorchScriptBackend)
    assert client.info.model_name == "ABMIL" and client.info.feature_dim == 24
    preds = client.predict(bags)
    onnx_preds = MILClient.from_path(abmil_onnx).predict(bags)
    for pred, other, bag in zip(preds, onnx_preds, bags):
        logits, attention = eager(bag)
        np.testing.assert_allclose(pred.logits, logits, atol=1e-5)
        np.testing.assert_allclose(pred.attention, attention, atol=1e-5)
        np.testing.assert_allclose(pred.logits, other.logits, atol=1e-5)
        assert pred.attention.shape == (len(bag),)


def test_bad_torchscript_files(tmp_path):
    garbage = tmp_path / "model.pt"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match=f"{garbage}: torch.jit cannot load it"):
        MILClient.from_path(garbage)


def test_torchscript_without_metadata(tmp_path):
    import torch

    class Plain(torch.nn.Module):
        def forward(self, features: torch.Tensor, mask: torch.Tensor):
            return features.mean(1), mask.float()

    path = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(Plain()), str(path))
    with pytest.raises(ArtifactError, match="no milsdk metadata"):
        TorchScriptBackend(path)


def test_the_backend_tests_each_bags_features_so_a_bad_bag_loses_only_itself(abmil_pt, eager, make_bags):
    client = MILClient.from_path(abmil_pt, device="cpu")
    assert client.backend.checks_features
    bags = make_bags([5, 9, 3])
    bad = bags[1].copy()
    bad[1, 2] = np.nan
    out = client.backend.run({"features": np.stack([bags[0][:3], bad[:3], bags[2]]),
                              "mask": np.ones((3, 3), dtype=bool)})
    np.testing.assert_allclose(out["features_check"][[0, 2]], [bags[0][:3].sum(), bags[2].sum()], rtol=1e-5)
    assert np.isnan(out["features_check"][1])
    preds = client.predict([bags[0], bad, bags[2]])
    assert (preds[1].index, preds[1].error) == (1, "features hold 1 NaN/inf values")
    for pred, bag in zip((preds[0], preds[2]), (bags[0], bags[2])):
        np.testing.assert_allclose(pred.logits, eager(bag)[0], atol=1e-5)


def test_a_bfloat16_artifact_warns_on_a_cpu_that_emulates_bfloat16(
    abmil_model, abmil_pt, tmp_path, monkeypatch, caplog
):
    from milsdk.export import export_torchscript
    from milsdk.serving.backends import torchscript

    path = export_torchscript(abmil_model, tmp_path / "bf16.pt", precision="bfloat16")
    monkeypatch.setattr(torchscript, "bfloat16_is_emulated", lambda: True)
    with caplog.at_level("WARNING", logger=torchscript.__name__):
        TorchScriptBackend(path, device="cpu")
    assert "no bfloat16 matrix instructions (amx_bf16/avx512_bf16)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger=torchscript.__name__):
        TorchScriptBackend(abmil_pt, device="cpu")  # float32: nothing to say
        monkeypatch.setattr(torchscript, "bfloat16_is_emulated", lambda: False)
        TorchScriptBackend(path, device="cpu")
    assert caplog.text == ""
