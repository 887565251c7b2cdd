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
