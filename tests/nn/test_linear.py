"""Linear layers: the bfloat16 Linear and the conversion of a model's Linear layers."""

from __future__ import annotations

import pytest
import torch

from milsdk.nn.linear import Bfloat16Linear, linear_in_weight_dtype, to_bfloat16_linears


def test_linear_in_weight_dtype_is_f_linear_for_float32_weights():
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 5, 8), torch.randn(3, 8), torch.randn(3)
    assert torch.equal(linear_in_weight_dtype(x, w, b), torch.nn.functional.linear(x, w, b))


def test_bfloat16_linear_multiplies_in_bfloat16_and_returns_float32():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 16)
    layer = Bfloat16Linear.from_linear(linear)
    assert layer.weight.dtype == layer.bias.dtype == torch.bfloat16 and not layer.weight.requires_grad
    x = torch.randn(4, 10, 64)
    out = layer(x)
    assert out.dtype == torch.float32 and out.shape == (4, 10, 16)
    # what it computes: the product of the inputs and weights rounded to bfloat16
    want = torch.nn.functional.linear(x.bfloat16(), linear.weight.bfloat16(), linear.bias.bfloat16()).float()
    torch.testing.assert_close(out, want)
    # ... which is float32's product to bfloat16's precision (8 significant bits), not exactly
    with torch.no_grad():
        exact = linear(x)
    error = float((out - exact).abs().max())
    assert 0 < error < 0.05 * float(exact.abs().max())
    assert set(layer.state_dict()) == {"weight", "bias"}
    assert Bfloat16Linear.from_linear(torch.nn.Linear(4, 2, bias=False)).bias is None


class _Owner(torch.nn.Module):
    """Two paths through one shared Linear, a Linear subclass read by its owner's code, a LayerNorm and a
    one-output head."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = torch.nn.Linear(32, 32)
        self.block = torch.nn.Sequential(self.shared, torch.nn.ReLU(), torch.nn.Linear(32, 16))
        self.subclass = torch.nn.modules.linear.NonDynamicallyQuantizableLinear(32, 16)
        self.norm = torch.nn.LayerNorm(32)
        self.head = torch.nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.norm(self.shared(x))) + self.subclass(x))


def test_to_bfloat16_linears_replaces_exactly_wide_nn_linears_and_keeps_sharing():
    model = _Owner()
    assert to_bfloat16_linears(model) == 2  # the shared layer counts once
    assert isinstance(model.shared, Bfloat16Linear) and model.block[0] is model.shared
    assert isinstance(model.block[2], Bfloat16Linear)
    assert type(model.head) is torch.nn.Linear and model.head.weight.dtype == torch.float32  # 1 output: narrow
    assert type(model.subclass) is torch.nn.modules.linear.NonDynamicallyQuantizableLinear
    assert model.subclass.weight.dtype == model.norm.weight.dtype == torch.float32
    out = torch.jit.script(model)(torch.randn(3, 32))
    assert out.dtype == torch.float32 and out.shape == (3, 1)


@pytest.mark.parametrize("bias", [True, False])
def test_a_scripted_bfloat16_linear_equals_the_eager_one(bias):
    layer = Bfloat16Linear.from_linear(torch.nn.Linear(16, 4, bias=bias))
    x = torch.randn(2, 7, 16)
    assert torch.equal(torch.jit.script(layer)(x), layer(x))


def test_a_bfloat16_product_in_row_blocks_equals_the_product_at_once():
    torch.manual_seed(1)
    layer = Bfloat16Linear.from_linear(torch.nn.Linear(16, 8))
    x = torch.randn(2, 45, 16)  # 90 rows: blocks of 32, 32 and 26
    whole = torch.nn.functional.linear(x.bfloat16(), layer.weight, layer.bias).float()
    scripted = torch.jit.script(linear_in_weight_dtype)
    for fn in (linear_in_weight_dtype, scripted):
        blocked = fn(x, layer.weight, layer.bias, 32)
        assert blocked.shape == (2, 45, 8) and blocked.dtype == torch.float32
        assert torch.equal(blocked, whole)
    assert torch.equal(layer(x), whole)  # 90 rows: one block at the default size
