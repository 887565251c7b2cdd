"""Whole-slide image canvases, numpy arrays in and out, with the names and arguments of torchmil.visualize.

Patches sit on a grid: patch i covers rows ``[row_i * ps, (row_i + 1) * ps)`` and columns
``[col_i * ps, (col_i + 1) * ps)`` of the canvas (ps = ``patch_size``). ``row_array`` / ``column_array`` are
grid indices, not pixels: for pixel coordinates use ``milsdk.visualize.grid_layout`` to get them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from milsdk.visualize._canvas import (
    WHITE,
    as_tile,
    blend_colors,
    check_alpha,
    check_size,
    check_values01,
    contour_half_width,
    to_dtype,
)
from milsdk.visualize.colors import Color
from milsdk.visualize.errors import VisualizeError

__all__ = ["patches_to_canvas", "draw_patches_contour", "draw_heatmap_wsi"]


def _grid_indices(row_array: np.ndarray, column_array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate two (N,) arrays of non-negative integer grid indices."""
    rows, cols = np.asarray(row_array).reshape(-1), np.asarray(column_array).reshape(-1)
    if rows.shape != cols.shape:
        raise VisualizeError(f"row_array has {rows.shape[0]} entries but column_array has {cols.shape[0]}")
    for name, arr in (("row_array", rows), ("column_array", cols)):
        if arr.size and (not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)) or arr.min() < 0):
            raise VisualizeError(f"{name} must hold non-negative integer grid indices (not pixels)")
    return rows.astype(np.int64), cols.astype(np.int64)


def _check_inside(canvas: np.ndarray, rows: np.ndarray, cols: np.ndarray, ps: int) -> None:
    if rows.size and ((rows.max() + 1) * ps > canvas.shape[0] or (cols.max() + 1) * ps > canvas.shape[1]):
        raise VisualizeError(
            f"a patch at grid cell ({rows.max()}, {cols.max()}) with patch_size {ps} lies outside the canvas "
            f"of shape {canvas.shape[:2]}"
        )


def patches_to_canvas(
    patches_list: Sequence[np.ndarray], row_array: np.ndarray, column_array: np.ndarray, patch_size: int
) -> np.ndarray:
    """Paste patches at their grid cells on a white canvas.

    Args:
        patches_list: N patches, each (ps, ps, 3) or grayscale (ps, ps), values 0-255.
        row_array: (N,) non-negative integer grid rows.
        column_array: (N,) non-negative integer grid columns.
        patch_size: ps, the side of a patch in pixels.

    Returns:
        (H, W, 3) uint8 with H = (max(row_array) + 1) * ps and W = (max(column_array) + 1) * ps, white (255)
        where no patch lies; a single white (ps, ps, 3) tile when there are no patches.
    """
    ps = check_size(patch_size, "patch_size")
    rows, cols = _grid_indices(row_array, column_array)
    if len(patches_list) != rows.shape[0]:
        raise VisualizeError(f"got {len(patches_list)} patches but {rows.shape[0]} grid positions")
    if rows.size == 0:
        return np.full((ps, ps, 3), WHITE, dtype=np.uint8)
    canvas = np.full(((rows.max() + 1) * ps, (cols.max() + 1) * ps, 3), WHITE, dtype=np.uint8)
    for i, (patch, r, c) in enumerate(zip(patches_list, rows, cols, strict=True)):
        canvas[r * ps : (r + 1) * ps, c * ps : (c + 1) * ps] = as_tile(patch, ps, f"patches_list[{i}]")
    return canvas


def draw_patches_contour(
    canvas: np.ndarray,
    row_array: np.ndarray,
    column_array: np.ndarray,
    patch_size: int,
    contour_prop: float = 0.05,
) -> np.ndarray:
    """Draw a black frame around every patch.

    Each edge of a patch is a band of half-width h = round(contour_prop * ps) (at least 1 pixel) centred on
    the edge: ``[edge - h, edge + h)``, extended by h past the corners so frames close, clipped to the
    canvas. Between two patches the band is 2h pixels wide (about 2 * contour_prop * ps), on the canvas
    border h pixels.

    Args:
        canvas: (H, W, C) or (H, W) image, any dtype; not modified.
        row_array, column_array: (N,) grid indices of the patches.
        patch_size: ps in pixels.
        contour_prop: half-width of the band as a fraction of ps, in [0, 0.5] (0 draws nothing).

    Returns:
        a copy of ``canvas`` with the frames set to 0.
    """
    ps = check_size(patch_size, "patch_size")
    rows, cols = _grid_indices(row_array, column_array)
    h = contour_half_width(contour_prop, ps)
    out = np.array(canvas, copy=True)
    _check_inside(out, rows, cols, ps)
    if h == 0:
        return out
    for r, c in zip(rows, cols, strict=True):
        top, left = r * ps, c * ps
        y0, y1 = max(top - h, 0), top + ps + h
        x0, x1 = max(left - h, 0), left + ps + h
        out[max(top - h, 0) : top + h, x0:x1] = 0
        out[max(top + ps - h, 0) : top + ps + h, x0:x1] = 0
        out[y0:y1, max(left - h, 0) : left + h] = 0
        out[y0:y1, max(left + ps - h, 0) : left + ps + h] = 0
    return out


def draw_heatmap_wsi(
    canvas: np.ndarray,
    values: np.ndarray,
    patch_size: int,
    row_array: np.ndarray,
    col_array: np.ndarray,
    alpha: float = 0.5,
    max_color: Color = "tab:red",
    min_color: Color = "tab:green",
) -> np.ndarray:
    """Blend a two-colour heatmap over the patches.

    Patch i gets ``colour_i = 255 * (v_i * max_color + (1 - v_i) * min_color)`` and its pixels become
    ``alpha * colour_i + (1 - alpha) * pixel``. With ``min_color="blank"`` the colour is ``255 * max_color``
    and the opacity is ``v_i`` (``alpha`` is then not used), so low values leave the tissue visible.
    Defaults: tab:red (0.839, 0.153, 0.157) for 1, tab:green (0.173, 0.627, 0.173) for 0.

    Args:
        canvas: (H, W, 3) image with values 0-255 (uint8 or float); not modified.
        values: (N,) floats in [0, 1] (see ``normalize_attention``).
        patch_size: ps in pixels.
        row_array, col_array: (N,) grid indices of the patches.
        alpha: opacity of the overlay in [0, 1].
        max_color, min_color: colour names, ``"#rrggbb"`` or RGB floats in [0, 1];
            ``min_color`` may be ``"blank"``.

    Returns:
        (H, W, 3) copy with the canvas dtype (integer dtypes rounded and clipped to 0-255).
    """
    ps = check_size(patch_size, "patch_size")
    rows, cols = _grid_indices(row_array, col_array)
    vals = check_values01(values, rows.shape[0])
    colours, opacities = blend_colors(vals, check_alpha(alpha), max_color, min_color)
    canvas = np.asarray(canvas)
    if canvas.ndim != 3 or canvas.shape[2] != 3:
        raise VisualizeError(f"canvas: expected an (H, W, 3) image, got shape {canvas.shape}")
    _check_inside(canvas, rows, cols, ps)
    out = canvas.astype(np.float64)
    for r, c, colour, a in zip(rows, cols, colours, opacities, strict=True):
        cell = (slice(r * ps, (r + 1) * ps), slice(c * ps, (c + 1) * ps))
        out[cell] = a * colour + (1.0 - a) * canvas[cell]
    return to_dtype(out, canvas.dtype)
