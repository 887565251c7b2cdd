"""Per-bag dense grids from coords: torchmil's seq_to_spatial per bag, padded instances create no cells."""

from __future__ import annotations

import pytest
import torch

from milsdk.nn.bag_grid import cells_to_grid, grid_sides, torchmil_grid_tokens

torchmil_data = pytest.importorskip("torchmil.data")


def _batch():
    H = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)
    cells = torch.tensor([[[0, 1], [2, 0], [1, 1], [7, 7]], [[0, 0], [0, 1], [5, 5], [6, 6]]])
    keep = torch.tensor([[True, True, True, False], [True, True, False, False]])
    return H, cells, keep


def test_grid_sides_come_from_the_real_instances():
    H, cells, keep = _batch()
    assert grid_sides(cells, keep).tolist() == [3, 2]
    assert grid_sides(cells, torch.zeros_like(keep)).tolist() == [1, 1]  # a bag without instances: one cell


def test_cells_to_grid_equals_torchmil_seq_to_spatial_per_bag():
    H, cells, keep = _batch()
    sides = grid_sides(cells, keep)
    grid = cells_to_grid(H, keep, cells, sides, 9)  # each bag's own layout
    for b, n in enumerate((3, 2)):
        expected = torchmil_data.seq_to_spatial(H[b : b + 1, :n], cells[b : b + 1, :n])[0]  # (h, w, E)
        S = int(sides[b])
        expected = torch.nn.functional.pad(expected, (0, 0, 0, S - expected.shape[1], 0, S - expected.shape[0]))
        torch.testing.assert_close(grid[b, : S * S], expected.reshape(S * S, 2))
        assert (grid[b, S * S :] == 0).all()
    batch_layout = cells_to_grid(H, keep, cells, torch.full_like(sides, 3), 9)
    assert batch_layout[1, 1].tolist() == H[1, 1].tolist() and batch_layout[1, 3].abs().sum() == 0


def test_instances_sharing_a_cell_are_averaged():
    H = torch.tensor([[[1.0], [3.0], [10.0]]])
    cells = torch.tensor([[[0, 0], [0, 0], [0, 1]]])
    grid = cells_to_grid(H, torch.ones(1, 3, dtype=torch.bool), cells, torch.tensor([2]), 4)
    assert grid[0, :, 0].tolist() == [2.0, 10.0, 0.0, 0.0]


def test_tokens_are_torchmil_reshape_of_the_channel_major_map():
    gen = torch.Generator().manual_seed(0)
    E, sides = 3, torch.tensor([3, 2])
    maps = [torch.randn(E, int(s), int(s), generator=gen) for s in sides]
    grid = torch.zeros(2, 9, E)
    for b, m in enumerate(maps):
        S = int(sides[b])
        grid[b, : S * S] = m.reshape(E, S * S).T
    tokens = torchmil_grid_tokens(grid, sides)
    for b, m in enumerate(maps):
        S = int(sides[b])
        torch.testing.assert_close(tokens[b, : S * S], m.reshape(S * S, E))  # torchmil's X.reshape(B, -1, E)
