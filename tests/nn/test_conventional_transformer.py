import pytest
import torch

from milsdk.nn.transformers import TransformerEncoder, TransformerLayer

JIT_DEPRECATED = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"


def _batch(lengths, n_max, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(len(lengths), n_max, dim, generator=g)
    mask = torch.zeros(len(lengths), n_max, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    return X, mask


def test_layer_layout_and_shapes():
    layer = TransformerLayer(6, out_dim=4, att_dim=8, n_heads=2)
    X, mask = _batch([3, 2], 3, 6)
    Y, att = layer(X, mask, return_att=True)
    assert Y.shape == (2, 3, 4) and att.shape == (2, 2, 3, 3)
    assert isinstance(layer.att_proj, torch.nn.Linear) and isinstance(layer.out_proj, torch.nn.Linear)


def test_layer_equals_its_formula():
    torch.manual_seed(0)
    layer = TransformerLayer(4, att_dim=4, n_heads=1, use_mlp=True).eval()
    X = torch.randn(1, 5, 4)
    Z = X + layer.att_module(layer.norm1(X))
    expected = Z + layer.mlp_module(layer.norm2(Z))
    assert torch.allclose(layer(X), expected, atol=1e-6)


def test_encoder_layout_follows_the_reference():
    enc = TransformerEncoder(6, out_dim=5, att_dim=8, n_heads=2, n_layers=3)
    assert [(layer.in_dim, layer.out_dim) for layer in enc.layers] == [(6, 8), (8, 8), (8, 5)]
    Y = enc(*_batch([4, 1], 4, 6))
    assert Y.shape == (2, 4, 5)


def test_add_self_with_several_layers_and_another_att_dim_works():
    # reference defect 8.4: n_layers > 1 with add_self and att_dim != in_dim crashed
    torch.manual_seed(0)
    enc = TransformerEncoder(6, att_dim=16, n_heads=2, n_layers=3, add_self=True).eval()
    assert all((layer.in_dim, layer.out_dim, layer.att_dim) == (6, 6, 16) for layer in enc.layers)
    X, mask = _batch([4, 2], 4, 6)
    Y = enc(X, mask)
    # add_self: every layer's output plus the encoder input, then the final norm
    H = X
    for layer in enc.layers:
        H = layer(H, mask) + X
    assert torch.allclose(Y, enc.norm(H), atol=1e-6)
    with pytest.raises(ValueError, match="out_dim must equal in_dim"):
        TransformerEncoder(6, out_dim=4, att_dim=16, add_self=True)


def test_padding_invariance_and_finite_attention_under_a_mask():
    torch.manual_seed(0)
    enc = TransformerEncoder(6, att_dim=8, n_heads=2, n_layers=2).eval()
    X, mask = _batch([5, 3, 0], 5, 6)
    X[1, 3:] = 1e3
    Y, att = enc(X, mask.to(torch.uint8), return_att=True)
    assert att.shape == (2, 3, 2, 5, 5) and torch.isfinite(att).all() and torch.isfinite(Y).all()
    assert torch.allclose(Y[1, :3], enc(X[1:2, :3])[0], atol=1e-5)


def test_forward_first_equals_the_first_rows():
    torch.manual_seed(0)
    enc = TransformerEncoder(6, att_dim=8, n_heads=2, n_layers=2).eval()
    X, mask = _batch([5, 3], 5, 6)
    Y, att = enc(X, mask, return_att=True)
    first, weights = enc.forward_first(X, mask, 1)
    assert torch.allclose(first, Y[:, :1], atol=1e-6)
    assert torch.allclose(weights, att[-1][:, :, :1], atol=1e-6)


@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_torchscript_matches_eager():
    torch.manual_seed(0)
    enc = TransformerEncoder(6, att_dim=8, n_heads=2, n_layers=2, add_self=True).eval()
    scripted = torch.jit.script(enc)
    X, mask = _batch([5, 3], 5, 6)
    assert torch.allclose(scripted(X, mask), enc(X, mask), atol=1e-6)
    assert torch.allclose(scripted.forward_first(X, mask, 1)[0], enc.forward_first(X, mask, 1)[0], atol=1e-6)
