import pytest
import torch

from milsdk.nn.attention import MultiheadSelfAttention
from milsdk.nn.transformers import Encoder, Layer


def _layers(n, dim=4):
    return torch.nn.ModuleList(
        Layer(MultiheadSelfAttention(dim, att_dim=dim, n_heads=2), dim, dim, use_mlp=False) for _ in range(n)
    )


def test_stack_and_add_self():
    torch.manual_seed(0)
    layers = _layers(2)
    X = torch.randn(2, 5, 4)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    plain = Encoder(layers).eval()
    assert torch.allclose(plain(X, mask), layers[1](layers[0](X, mask), mask), atol=1e-6)
    added = Encoder(layers, add_self=True).eval()
    expected = layers[1](layers[0](X, mask) + X, mask) + X
    assert torch.allclose(added(X, mask), expected, atol=1e-6)
    _, att = added(X, mask, return_att=True)
    assert att.shape == (2, 2, 2, 5, 5) and torch.isfinite(att).all()


def test_forward_first_and_padding():
    torch.manual_seed(0)
    enc = Encoder(_layers(2), add_self=True).eval()
    X = torch.randn(2, 5, 4)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    Y = enc(X, mask)
    first, w = enc.forward_first(X, mask, 2)
    assert torch.allclose(first, Y[:, :2], atol=1e-6) and w.shape == (2, 2, 2, 5)
    assert torch.allclose(Y[1, :2], enc(X[1:2, :2])[0], atol=1e-6)


def test_needs_a_layer():
    with pytest.raises(ValueError, match="at least one layer"):
        Encoder(torch.nn.ModuleList())
