import pytest
import torch

from milsdk.nn.attention import MultiheadSelfAttention
from milsdk.nn.mlp import get_activation
from milsdk.nn.transformers import Layer

JIT_DEPRECATED = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"


def test_generic_layer_formula_with_projections():
    torch.manual_seed(0)
    att = MultiheadSelfAttention(8, 12, att_dim=12, n_heads=2)
    layer = Layer(att, in_dim=6, att_in_dim=8, out_dim=5, att_out_dim=12, use_mlp=True).eval()
    X = torch.randn(2, 4, 6)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    Xp = layer.in_proj(X)
    Z = layer.att_proj(Xp) + att(layer.norm1(Xp), mask)
    expected = layer.out_proj(Z + layer.mlp_module(layer.norm2(Z)))
    assert torch.allclose(layer(X, mask), expected, atol=1e-6)


def test_without_mlp_there_is_no_mlp_and_custom_mlp_is_used():
    att = MultiheadSelfAttention(4, att_dim=4, n_heads=1)
    assert Layer(att, 4, 4, use_mlp=False).mlp_module is None
    custom = torch.nn.Linear(4, 4)
    assert Layer(att, 4, 4, mlp_module=custom).mlp_module is custom


@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_scriptable():
    layer = Layer(MultiheadSelfAttention(4, att_dim=4, n_heads=2), 4, 4).eval()
    X = torch.randn(1, 3, 4)
    assert torch.allclose(torch.jit.script(layer)(X), layer(X), atol=1e-6)


def test_get_activation_reference_names():
    assert isinstance(get_activation("relu"), torch.nn.ReLU)
    assert isinstance(get_activation("tanh"), torch.nn.Tanh)
    assert get_activation("none") is None and get_activation(None) is None
    with pytest.raises(ValueError, match="unknown activation"):
        get_activation("swishy")
