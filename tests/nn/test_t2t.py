"""Tokens-to-token layer: the reference's shapes, unfold by hand, masked cells."""

from __future__ import annotations

import pytest
import torch

from milsdk.nn.transformers import T2TLayer


def test_sixteen_tokens_give_36_patches_of_nine_cells():
    layer = T2TLayer(5, att_dim=8, n_heads=2).eval()
    assert layer(torch.randn(2, 16, 5)).shape == (2, 36, 72)
    assert T2TLayer(5, out_dim=3, att_dim=8, n_heads=2)(torch.randn(2, 16, 5)).shape == (2, 36, 3)


def test_unfold_of_the_transformer_output_by_hand():
    torch.manual_seed(0)
    layer = T2TLayer(4, att_dim=4, n_heads=2, kernel_size=(3, 3), padding=(1, 1)).eval()
    x = torch.randn(1, 9, 4)
    t, _ = layer.transf_layer.forward_pos(x, torch.ones(1, 9, dtype=torch.bool), torch.zeros(1, 9, 2, dtype=torch.long))
    grid = torch.nn.functional.pad(t[0].reshape(3, 3, 4), (0, 0, 1, 1, 1, 1))  # (5, 5, C)
    centre = grid[0:3, 0:3].permute(2, 0, 1).reshape(-1)  # window of cell (0, 0), channel-major
    torch.testing.assert_close(layer(x)[0, 0], centre)


def test_masked_cells_never_change_the_output():
    torch.manual_seed(1)
    layer = T2TLayer(4, att_dim=4, n_heads=2).eval()
    x = torch.randn(1, 9, 4)
    mask = torch.tensor([[1, 1, 0, 1, 1, 1, 0, 1, 1]], dtype=torch.uint8)
    y = layer(x, mask)
    x2 = x.clone()
    x2[0, [2, 6]] = 50 * torch.randn(2, 4)
    torch.testing.assert_close(layer(x2, mask), y)
    assert torch.isfinite(layer(x, torch.zeros(1, 9, dtype=torch.bool))).all()


def test_non_square_token_count_is_refused():
    with pytest.raises(ValueError, match="square"):
        T2TLayer(4, att_dim=4, n_heads=2)(torch.randn(1, 10, 4))
