import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from milsdk.errors import ModelConfigError
from milsdk.export.onnx import export_onnx
from milsdk.models import TransformerABMIL, create_model


def test_several_layers_with_add_self_and_another_att_dim_work():
    # reference defect 8.4: transf_n_layers > 1 crashed when transf_att_dim != feature size (add_self default)
    torch.manual_seed(0)
    model = TransformerABMIL(
        in_shape=(12,), transf_att_dim=16, transf_n_layers=3, transf_n_heads=2, pool_att_dim=8
    ).eval()
    X = torch.randn(2, 7, 12)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    logits, f = model(X, mask, return_att=True)
    assert logits.shape == (2,) and f.shape == (2, 7)
    alone = model(X[1:, :4])
    assert torch.allclose(logits[1:], alone, atol=1e-5)


def test_in_shape_is_required_and_heads_must_divide():
    with pytest.raises(ModelConfigError, match="needs in_shape"):
        create_model("TransformerABMIL", in_shape=None)
    with pytest.raises(ModelConfigError, match="must divide"):
        TransformerABMIL(in_shape=(8,), transf_att_dim=10, transf_n_heads=4)


def test_onnx_artifact_chunks_attention_and_matches_eager_beyond_one_chunk(tmp_path):
    torch.manual_seed(0)
    model = TransformerABMIL(in_shape=(12,), transf_att_dim=16, transf_n_heads=2, pool_att_dim=8).eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    assert "Scan" in [n.op_type for n in onnx.load(str(path)).graph.node]  # linear-memory attention
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 1300, 12)  # > 512 query rows per head chunk: several chunks
    mask = torch.ones(2, 1300, dtype=torch.bool)
    mask[1, 900:] = False
    logits, att = session.run(None, {"features": x.numpy(), "mask": mask.numpy()})
    with torch.no_grad(), warnings.catch_warnings():
        want, f = model(x, mask, return_att=True)
    np.testing.assert_allclose(logits[:, 0], want.numpy(), atol=1e-4)
    np.testing.assert_allclose(att, model.deployment_attention(f, mask).numpy(), atol=1e-5)
