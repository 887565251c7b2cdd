"""Pixel operations shared by the WSI and CT canvases (private): tiles, contour width, colour blend."""

from __future__ import annotations

import numpy as np

from milsdk.visualize.colors import Color, to_rgb
from milsdk.visualize.errors import VisualizeError

WHITE = 255


def as_tile(tile: np.ndarray, size: int, name: str) -> np.ndarray:
    """One square image, (size, size[, 1 or 3]) with values 0-255, as (size, size, 3) uint8."""
    arr = np.asarray(tile)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.shape != (size, size, 3):
        raise VisualizeError(
            f"{name}: expected shape ({size}, {size}, 3) or ({size}, {size}), got {np.shape(tile)}"
        )
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64)), 0, 255).astype(np.uint8)
    return arr


def check_size(size: int, name: str) -> int:
    """A positive integer pixel size."""
    if int(size) != size or size < 1:
        raise VisualizeError(f"{name} must be a positive integer, got {size!r}")
    return int(size)


def contour_half_width(contour_prop: float, size: int) -> int:
    """Half-width h of a contour band: round(contour_prop * size), at least 1 when contour_prop > 0."""
    if not 0 <= contour_prop <= 0.5:
        raise VisualizeError(f"contour_prop must lie in [0, 0.5], got {contour_prop}")
    if contour_prop == 0:
        return 0
    return max(1, round(contour_prop * size))


def check_values01(values: np.ndarray, n: int, name: str = "values") -> np.ndarray:
    """(n,) finite floats in [0, 1] (the reference's heatmap input); returns float64."""
    vals = np.asarray(values, dtype=np.float64).reshape(-1)
    if vals.shape[0] != n:
        raise VisualizeError(f"{name}: expected {n} values (one per patch / slice), got {vals.shape[0]}")
    if not np.all(np.isfinite(vals)) or (n and (vals.min() < 0 or vals.max() > 1)):
        raise VisualizeError(
            f"{name} must be finite and in [0, 1]; map attention with normalize_attention first"
        )
    return vals


def check_alpha(alpha: float) -> float:
    if not 0 <= alpha <= 1:
        raise VisualizeError(f"alpha must lie in [0, 1], got {alpha}")
    return float(alpha)


def blend_colors(
    values: np.ndarray, alpha: float, max_color: Color, min_color: Color | str
) -> tuple[np.ndarray, np.ndarray]:
    """Per-item overlay colour (0-255) and opacity of the reference's heatmap blend.

    ``colour_i = 255 * (v_i * max_color + (1 - v_i) * min_color)`` at opacity ``alpha``; with
    ``min_color="blank"``, ``colour_i = 255 * max_color`` at opacity ``v_i`` (``alpha`` is then not used).

    Args:
        values: (n,) float64 in [0, 1].

    Returns:
        colours (n, 3) float64 in [0, 255], opacities (n,) float64.
    """
    hi = to_rgb(max_color)
    if isinstance(min_color, str) and min_color == "blank":
        return np.tile(255.0 * hi, (len(values), 1)), values.copy()
    lo = to_rgb(min_color)
    colours = 255.0 * (values[:, None] * hi + (1.0 - values[:, None]) * lo)
    return colours, np.full(len(values), alpha)


def to_dtype(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast a float image back to ``dtype``: integer types are rounded and clipped to 0-255."""
    if np.issubdtype(dtype, np.integer):
        return np.clip(np.rint(image), 0, 255).astype(dtype)
    return image.astype(dtype)
