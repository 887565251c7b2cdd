"""Conversions between the sequential (B, N, D) and spatial (B, H, W, ..., D) bag representations."""

from __future__ import annotations

import torch

__all__ = ["seq_to_spatial", "spatial_to_seq"]


def seq_to_spatial(X: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Scatter instance features onto a zero-filled grid at their integer coordinates.

    Args:
        X: (B, N, D) features.
        coords: (B, N, n) non-negative integer coordinates.

    Returns:
        (B, c_1, ..., c_n, D) with c_k = max over the batch of coords[..., k] + 1; X[b, i] is written at
        coords[b, i]. Cells no instance maps to are 0.
    """
    coords = coords.long()
    B, N, D = X.shape
    n_dims = coords.shape[-1]
    extent = [int(coords[..., k].max().item()) + 1 if coords.numel() else 1 for k in range(n_dims)]
    flat = _flat_index(coords, extent)  # (B, N)
    grid = X.new_zeros(B, _prod(extent), D)
    grid.scatter_(1, flat.unsqueeze(-1).expand(B, N, D), X)
    return grid.view(B, *extent, D)


def spatial_to_seq(X_esp: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Gather instance features from a grid at their coordinates (the inverse of ``seq_to_spatial``).

    Args:
        X_esp: (B, c_1, ..., c_n, D) grid.
        coords: (B, N, n) integer coordinates inside the grid.

    Returns:
        (B, N, D) features.
    """
    coords = coords.long()
    B, N, n_dims = coords.shape
    extent = list(X_esp.shape[1 : 1 + n_dims])
    D = X_esp.shape[-1]
    flat = _flat_index(coords, extent)
    return X_esp.reshape(B, -1, D).gather(1, flat.unsqueeze(-1).expand(B, N, D))


def _flat_index(coords: torch.Tensor, extent: list[int]) -> torch.Tensor:
    """Row-major flat index of (B, N, n) coords in a grid of the given extent."""
    flat = torch.zeros(coords.shape[:-1], dtype=torch.long, device=coords.device)
    for k, size in enumerate(extent):
        flat = flat * size + coords[..., k]
    return flat


def _prod(values: list[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out
