"""CT-scan canvases (numpy arrays in, arrays out), with the names and arguments of torchmil.visualize.

Slice i of a scan occupies the column block ``[i * ss, (i + 1) * ss)`` of a canvas one slice high
(ss = ``slice_size``), slices left to right in bag order.
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

__all__ = ["slices_to_canvas", "draw_slices_contour", "draw_heatmap_ctscan"]


def _n_slices(canvas: np.ndarray, ss: int) -> int:
    if canvas.ndim < 2 or canvas.shape[0] < ss or canvas.shape[1] % ss:
        raise VisualizeError(
            f"canvas of shape {canvas.shape} is not a row of {ss}x{ss} slices "
            f"(width must be a multiple of {ss})"
        )
    return canvas.shape[1] // ss


def slices_to_canvas(slices_list: Sequence[np.ndarray], slice_size: int) -> np.ndarray:
    """Place CT slices left to right on a white canvas.

    Args:
        slices_list: n slices, each (ss, ss, 3) or grayscale (ss, ss), values 0-255.
        slice_size: ss in pixels.

    Returns:
        (ss, n * ss, 3) uint8; a single white (ss, ss, 3) tile when there are no slices.
    """
    ss = check_size(slice_size, "slice_size")
    if len(slices_list) == 0:
        return np.full((ss, ss, 3), WHITE, dtype=np.uint8)
    return np.concatenate([as_tile(s, ss, f"slices_list[{i}]") for i, s in enumerate(slices_list)], axis=1)


def draw_slices_contour(canvas: np.ndarray, slice_size: int, contour_prop: float = 0.05) -> np.ndarray:
    """Draw black vertical separators at the slice boundaries.

    Every boundary x = k * ss (k = 0..n, the two outer edges included) gets a band ``[x - h, x + h)`` clipped
    to the canvas, h = round(contour_prop * ss) (at least 1 pixel): 2h pixels between slices, h at the ends.
    The reference wrapped the first band to the far right through a negative index; this one does not.

    Args:
        canvas: (ss, n * ss, C) or (ss, n * ss) image, any dtype; not modified.
        slice_size: ss in pixels.
        contour_prop: half-width of the band as a fraction of ss, in [0, 0.5] (0 draws nothing).

    Returns:
        a copy of ``canvas`` with the separators set to 0.
    """
    ss = check_size(slice_size, "slice_size")
    h = contour_half_width(contour_prop, ss)
    out = np.array(canvas, copy=True)
    n = _n_slices(out, ss)
    if h:
        for k in range(n + 1):
            out[:, max(k * ss - h, 0) : k * ss + h] = 0
    return out


def draw_heatmap_ctscan(
    canvas: np.ndarray,
    values: np.ndarray,
    slice_size: int,
    alpha: float = 0.5,
    max_color: Color = "tab:red",
    min_color: Color = "tab:green",
) -> np.ndarray:
    """Blend a two-colour heatmap over each slice's column block.

    The blend is the one of ``draw_heatmap_wsi``: slice i gets
    ``colour_i = 255 * (v_i * max_color + (1 - v_i) * min_color)`` at opacity ``alpha``
    (``min_color="blank"``: ``255 * max_color`` at opacity ``v_i``).

    Args:
        canvas: (ss, n * ss, 3) image with values 0-255; not modified.
        values: (m,) floats in [0, 1], m <= n; slice i >= m is left as it is.
        slice_size: ss in pixels.
        alpha: opacity of the overlay in [0, 1].
        max_color, min_color: colour names, ``"#rrggbb"`` or RGB floats in [0, 1];
            ``min_color`` may be ``"blank"``.

    Returns:
        (ss, n * ss, 3) uint8, rounded and clipped to 0-255.
    """
    ss = check_size(slice_size, "slice_size")
    canvas = np.asarray(canvas)
    if canvas.ndim != 3 or canvas.shape[2] != 3:
        raise VisualizeError(f"canvas: expected an (ss, n * ss, 3) image, got shape {canvas.shape}")
    n = _n_slices(canvas, ss)
    m = np.asarray(values).reshape(-1).shape[0]
    if m > n:
        raise VisualizeError(f"got {m} values for a canvas of {n} slices")
    colours, opacities = blend_colors(check_values01(values, m), check_alpha(alpha), max_color, min_color)
    out = canvas.astype(np.float64)
    for i, (colour, a) in enumerate(zip(colours, opacities, strict=True)):
        block = (slice(None), slice(i * ss, (i + 1) * ss))
        out[block] = a * colour + (1.0 - a) * out[block]
    return to_dtype(out, np.dtype(np.uint8))
