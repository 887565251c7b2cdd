import torch

from milsdk.data import seq_to_spatial, spatial_to_seq


def test_seq_to_spatial_places_rows_at_coordinates():
    X = torch.tensor([[[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]]])
    coords = torch.tensor([[[0, 0], [1, 2], [0, 1]]])
    grid = seq_to_spatial(X, coords)
    assert grid.shape == (1, 2, 3, 2)
    assert grid[0, 0, 0].tolist() == [1.0, 10.0]
    assert grid[0, 1, 2].tolist() == [2.0, 20.0]
    assert grid[0, 0, 1].tolist() == [3.0, 30.0]
    assert grid[0, 1, 0].tolist() == [0.0, 0.0]


def test_round_trip_returns_original_features_batched_3d():
    gen = torch.Generator().manual_seed(0)
    B, N, D = 2, 6, 4
    coords = torch.stack([torch.randperm(27, generator=gen)[:N] for _ in range(B)])
    coords3 = torch.stack([coords // 9, (coords // 3) % 3, coords % 3], dim=-1)
    X = torch.randn(B, N, D, generator=gen)
    grid = seq_to_spatial(X, coords3)
    assert grid.shape[1:4] == tuple(int(coords3[..., k].max()) + 1 for k in range(3))
    assert torch.equal(spatial_to_seq(grid, coords3), X)
