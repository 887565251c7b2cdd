"""Attention on a grid of patches (numpy only): coordinates -> grid cells -> coloured RGB canvas.

Coordinates follow CLAM / TRIDENT feature files: ``coords[:, 0]`` is x (the column direction) and
``coords[:, 1]`` is y (the row direction), in pixels or in grid units; for (row, col) coordinates pass
``coords[:, ::-1]``.

Grid rule: the step s (coordinate units per cell) is ``patch_size`` when given. Otherwise, for integer
coordinates, it is the greatest common divisor (GCD) of the coordinates' offsets from their minimum, unless
the most common spacing between neighbouring patches of one row or column is more than 4 times that GCD: then
the patches come from several grids with different origins (CLAM patches each tissue region from its own
corner) and that spacing is the step. Non-integer coordinates use the most common neighbour spacing (or the
smallest difference between sorted values when no two patches share a row or column). One step serves both
axes (square patches). A patch at (x, y) falls in cell ``row = floor((y - y_min) / s)``,
``col = floor((x - x_min) / s)``: the grid is cropped to the patches' bounding box. Where two patches fall in
one cell (patch_size larger than their spacing, or offset grids) the cell keeps the larger value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from milsdk.visualize.colors import apply_colormap
from milsdk.visualize.errors import VisualizeError
from milsdk.visualize.normalize import _as_attention

__all__ = ["GridLayout", "grid_layout", "attention_grid", "attention_canvas"]

MAX_CELLS = 50_000_000
"""Largest grid accepted: too small an inferred step (jittered coordinates) would otherwise allocate GBs."""


@dataclass(frozen=True)
class GridLayout:
    """Where each patch lies on the grid.

    Attributes:
        rows, cols: (N,) int64 cell indices of the patches.
        shape: (H, W) number of cells.
        step: coordinate units per cell.
        origin: (x, y) coordinates of the top-left corner of cell (0, 0).
    """

    rows: np.ndarray
    cols: np.ndarray
    shape: tuple[int, int]
    step: float
    origin: tuple[float, float]

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(left, right, bottom, top) in coordinate units, y pointing down (matplotlib's ``extent``)."""
        (x0, y0), (h, w) = self.origin, self.shape
        return (x0, x0 + w * self.step, y0 + h * self.step, y0)


def _as_coords(coords: np.ndarray) -> np.ndarray:
    xy = np.asarray(coords, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2 or xy.shape[0] == 0:
        raise VisualizeError(f"coords: expected shape (N, 2) with N >= 1, got {np.shape(coords)}")
    if not np.all(np.isfinite(xy)):
        raise VisualizeError("coords: some coordinates are not finite")
    return xy


def _neighbour_spacing(offsets: np.ndarray) -> float | None:
    """Most common distance between consecutive patches of one row (same y) or one column (same x)."""
    gaps = []
    for along, across in ((0, 1), (1, 0)):
        order = np.lexsort((offsets[:, along], offsets[:, across]))
        line, pos = offsets[order, across], offsets[order, along]
        same_line = line[1:] == line[:-1]
        gaps.append((pos[1:] - pos[:-1])[same_line])
    gaps = np.concatenate(gaps)
    gaps = gaps[gaps > 0]
    if gaps.size == 0:
        return None
    values, counts = np.unique(gaps, return_counts=True)
    return float(values[np.argmax(counts)])


def _infer_step(offsets: np.ndarray) -> float:
    """Grid step from (N, 2) non-negative offsets to the minimum coordinates (rule: module docstring)."""
    rounded = np.round(offsets)
    spacing = _neighbour_spacing(offsets)
    if np.all(np.abs(offsets - rounded) <= 1e-6 * np.maximum(1.0, np.abs(offsets))):
        nonzero = rounded[rounded > 0].astype(np.int64)
        gcd = float(np.gcd.reduce(nonzero)) if nonzero.size else 1.0
        return spacing if spacing is not None and spacing > 4 * gcd else gcd
    if spacing is not None:
        return spacing
    diffs = np.concatenate([np.diff(np.unique(offsets[:, k])) for k in range(2)])
    diffs = diffs[diffs > 1e-9 * max(1.0, float(offsets.max()))]
    return float(diffs.min()) if diffs.size else 1.0


def grid_layout(coords: np.ndarray, patch_size: float | None = None) -> GridLayout:
    """Assign each patch a grid cell (rule in the module docstring).

    Args:
        coords: (N, 2) x, y of each patch's top-left corner, pixels or grid units.
        patch_size: step between cells in coordinate units; inferred from the coordinates when None.

    Returns:
        a ``GridLayout`` with (N,) rows and cols and the (H, W) grid shape.
    """
    xy = _as_coords(coords)
    lo = xy.min(axis=0)
    offsets = xy - lo
    if patch_size is None:
        step = _infer_step(offsets)
    elif not np.isfinite(patch_size) or patch_size <= 0:
        raise VisualizeError(f"patch_size must be a positive number, got {patch_size!r}")
    else:
        step = float(patch_size)
    cells = np.floor(offsets / step + 1e-9).astype(np.int64)
    h, w = int(cells[:, 1].max()) + 1, int(cells[:, 0].max()) + 1
    if h * w > MAX_CELLS:
        raise VisualizeError(
            f"coords give a grid of {h} x {w} cells with step {step:g}: pass patch_size "
            "(the patch spacing in the coordinates' units)"
        )
    return GridLayout(
        rows=cells[:, 1], cols=cells[:, 0], shape=(h, w), step=step, origin=(float(lo[0]), float(lo[1]))
    )


def attention_grid(coords: np.ndarray, attention: np.ndarray, patch_size: float | None = None) -> np.ndarray:
    """Place one bag's attention on its patch grid.

    Args:
        coords: (N, 2) x, y of each patch, pixels or grid units.
        attention: (N,) finite values (raw or normalised).
        patch_size: step between cells in coordinate units; inferred when None.

    Returns:
        (H, W) float64 with each patch's value in its cell and NaN where no patch lies.
    """
    att = _as_attention(attention)
    layout = grid_layout(coords, patch_size)
    if att.shape[0] != layout.rows.shape[0]:
        raise VisualizeError(
            f"attention has {att.shape[0]} values but coords has {layout.rows.shape[0]} rows"
        )
    grid = np.full(layout.shape, -np.inf)
    np.maximum.at(grid, (layout.rows, layout.cols), att)
    grid[np.isneginf(grid)] = np.nan
    return grid


def attention_canvas(
    grid: np.ndarray,
    cmap: str = "viridis",
    cell_size: int | tuple[int, int] = 1,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Colour a grid of values in [0, 1] with a perceptual colour map, without matplotlib.

    Args:
        grid: (H, W) floats in [0, 1] (values outside are clipped), NaN where no patch lies.
        cmap: one of ``milsdk.visualize.COLORMAPS``; 0 is the map's coldest colour, 1 its hottest.
        cell_size: pixels per cell, an int or (height, width).
        background: RGB 0-255 of NaN cells.

    Returns:
        (H * cell_h, W * cell_w, 3) uint8 RGB; cell (r, c) fills rows ``[r * cell_h, (r + 1) * cell_h)`` and
        columns ``[c * cell_w, (c + 1) * cell_w)``.
    """
    values = np.asarray(grid, dtype=np.float64)
    if values.ndim != 2:
        raise VisualizeError(f"grid: expected an (H, W) array, got shape {values.shape}")
    ch, cw = (cell_size, cell_size) if np.isscalar(cell_size) else tuple(cell_size)
    if int(ch) != ch or int(cw) != cw or ch < 1 or cw < 1:
        raise VisualizeError(f"cell_size must be positive integers, got {cell_size!r}")
    missing = np.isnan(values)
    rgb = apply_colormap(np.where(missing, 0.0, values), cmap)
    rgb[missing] = np.asarray(background, dtype=np.uint8)
    return np.repeat(np.repeat(rgb, int(ch), axis=0), int(cw), axis=1)
