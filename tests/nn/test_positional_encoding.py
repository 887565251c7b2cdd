"""N-D sinusoidal positional encoding: the formula by hand, shapes, odd channel counts, dtype."""

from __future__ import annotations

import math

import pytest
import torch

from milsdk.nn.positional_encoding import SinusoidalPositionalEncodingND


def test_one_dimension_by_hand():
    pe = SinusoidalPositionalEncodingND(1, 4)
    out = pe(torch.zeros(2, 3, 4))
    assert out.shape == (2, 3, 4)
    for p in range(3):
        want = [math.sin(p), math.cos(p), math.sin(p / 100), math.cos(p / 100)]
        torch.testing.assert_close(out[1, p], torch.tensor(want))


def test_two_dimensions_concatenate_the_axes_and_cut_channels():
    pe = SinusoidalPositionalEncodingND(2, 6)  # 4 channels per axis, cut to 6
    out = pe(torch.zeros(1, 3, 5, 6))
    assert out.shape == (1, 3, 5, 6)
    row = SinusoidalPositionalEncodingND(1, 4).encode(torch.tensor([[2.0]]))[0]
    col = SinusoidalPositionalEncodingND(1, 4).encode(torch.tensor([[4.0]]))[0]
    torch.testing.assert_close(out[0, 2, 4], torch.cat([row, col])[:6])


def test_encode_of_positions_equals_the_grid_and_dtype_override():
    pe = SinusoidalPositionalEncodingND(1, 7, dtype_override=torch.float64)
    grid = pe(torch.zeros(1, 10, 7, dtype=torch.float16))
    assert grid.dtype == torch.float64
    torch.testing.assert_close(grid[0].float(), pe.encode(torch.arange(10.0).unsqueeze(-1)))


def test_wrong_rank_is_refused():
    with pytest.raises(ValueError, match="3-D"):
        SinusoidalPositionalEncodingND(1, 4)(torch.zeros(2, 3, 3, 4))
