"""iRPE transformer layer and encoder: shapes, masking, the final norm, add_self, TorchScript."""

from __future__ import annotations

import pytest
import torch

from milsdk.nn.transformers import iRPETransformerEncoder, iRPETransformerLayer


def _randomised(module: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module.eval()


def test_layer_is_pre_norm_residual_by_hand():
    layer = _randomised(iRPETransformerLayer(6, 5, att_dim=8, n_heads=2, use_mlp=True))
    x = torch.randn(2, 7, 6)
    coords = torch.randint(0, 5, (2, 6, 2))
    z = layer.att_proj(x) + layer.att_module(layer.norm1(x), coords=coords)
    want = layer.out_proj(z + layer.mlp_module(layer.norm2(z)))
    torch.testing.assert_close(layer(x, coords=coords), want)
    y, att = layer(x, return_att=True, coords=coords)
    assert y.shape == (2, 7, 5) and att.shape == (2, 2, 7, 7)


def test_encoder_shapes_final_norm_and_padding():
    enc = _randomised(iRPETransformerEncoder(6, 4, att_dim=8, n_heads=2, n_layers=2, rpe_method="cross"))
    x = torch.randn(1, 6, 6)
    coords = torch.randint(0, 9, (1, 5, 2))
    y_alone, att_alone = enc(x, return_att=True, coords=coords)
    assert y_alone.shape == (1, 6, 4) and att_alone.shape == (2, 1, 2, 6, 6)
    normalised = (y_alone - enc.norm.bias) / enc.norm.weight  # the final LayerNorm: zero mean per token
    torch.testing.assert_close(normalised.mean(-1), torch.zeros(1, 6), atol=1e-5, rtol=0)
    xp = torch.cat([x, torch.randn(1, 3, 6)], dim=1)
    cp = torch.cat([coords, torch.randint(0, 99, (1, 3, 2))], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 3], dtype=torch.uint8)
    y, att = enc(xp, mask, return_att=True, coords=cp)
    torch.testing.assert_close(y[:, :6], y_alone, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(att).all() and (att[..., 6:] == 0).all()


def test_add_self_and_its_size_check():
    enc = _randomised(iRPETransformerEncoder(8, att_dim=8, n_heads=2, n_layers=2, add_self=True))
    x = torch.randn(1, 5, 8)
    assert enc(x).shape == (1, 5, 8)
    with pytest.raises(ValueError, match="add_self"):
        iRPETransformerEncoder(6, att_dim=8, n_layers=2, add_self=True)


def test_torchscript_equals_eager():
    enc = _randomised(iRPETransformerEncoder(6, att_dim=8, n_heads=2, n_layers=1))
    x = torch.randn(2, 5, 6)
    coords = torch.randint(0, 5, (2, 4, 2))
    scripted = torch.jit.script(enc)
    torch.testing.assert_close(scripted(x, None, False, None, None, coords), enc(x, coords=coords))
