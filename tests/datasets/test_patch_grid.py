"""Patch coordinates -> integer grid positions."""

from __future__ import annotations

import numpy as np

from milsdk.datasets.patch_grid import coords_to_grid, infer_patch_size, square_grid


def test_coords_to_grid_divides_and_shifts_to_zero():
    coords = np.array([[1024, 512], [1536, 512], [1024, 1024]])
    grid = coords_to_grid(coords, patch_size=512)
    assert grid.tolist() == [[0, 0], [1, 0], [0, 1]] and grid.dtype == np.int64


def test_coords_to_grid_floors_partial_steps():
    assert coords_to_grid(np.array([[0], [700], [1100]]), patch_size=512).ravel().tolist() == [0, 1, 2]


def test_infer_patch_size_finds_the_stride_in_any_unit():
    um = np.array([[0.0, 0.0], [112.5, 0.0], [337.5, 112.5]])  # micrometres, one gap skipped
    assert infer_patch_size(um) == 112.5
    assert coords_to_grid(um).tolist() == [[0, 0], [1, 0], [3, 1]]
    assert infer_patch_size(np.array([[5, 5]])) == 1.0


def test_square_grid_is_near_square_row_major():
    assert square_grid(5).tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1]]
    assert square_grid(9)[:, 0].max() == 2 and square_grid(9)[:, 1].max() == 2
    assert square_grid(1).tolist() == [[0, 0]]
