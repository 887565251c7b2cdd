"""Patch coordinates -> integer grid positions (what ``seq_to_spatial``, adjacency and heatmaps expect)."""

from __future__ import annotations

import numpy as np

__all__ = ["coords_to_grid", "infer_patch_size", "square_grid"]

# Positions that land within this of an integer are taken as that integer (float coords such as micrometres).
_SNAP = 1e-6


def infer_patch_size(coords: np.ndarray) -> float:
    """The grid step of patch coordinates: the smallest positive gap between distinct values along any axis.

    Works for any unit (level-0 pixels, micrometres) and for overlapping patches (it finds the stride).

    Args:
        coords: (N, d) patch positions.

    Returns:
        the step; 1.0 when it cannot be seen (one patch, or all patches on one position).
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(len(coords), -1)
    steps = [np.diff(np.unique(coords[:, k])) for k in range(coords.shape[1])]
    gaps = np.concatenate(steps) if steps else np.empty(0)
    gaps = gaps[gaps > 0]
    return float(gaps.min()) if gaps.size else 1.0


def coords_to_grid(coords: np.ndarray, patch_size: float | None = None) -> np.ndarray:
    """Map patch positions to grid cells starting at 0: ``floor(coords / patch_size - min(coords / patch_size))``.

    Args:
        coords: (N, d) positions (e.g. top-left corners in level-0 pixels).
        patch_size: grid step in the units of ``coords``; None infers it (``infer_patch_size``).

    Returns:
        (N, d) int64 grid positions, each axis starting at 0.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(len(coords), -1)
    if len(coords) == 0:
        return np.zeros(coords.shape, dtype=np.int64)
    step = infer_patch_size(coords) if patch_size is None else float(patch_size)
    if not step > 0:
        raise ValueError(f"coords_to_grid: patch_size must be > 0, got {patch_size}")
    scaled = coords / step
    return np.floor(scaled - scaled.min(axis=0) + _SNAP).astype(np.int64)


def square_grid(n: int) -> np.ndarray:
    """Lay ``n`` instances out row by row on a near-square grid of ``ceil(sqrt(n))`` columns.

    Returns:
        (n, 2) int64 (row, column) positions.
    """
    cols = max(1, int(np.ceil(np.sqrt(n))))
    index = np.arange(n, dtype=np.int64)
    return np.stack([index // cols, index % cols], axis=1)
