"""Attention visualisation for WSI and CT bags: numpy canvases, and PNG heatmaps with the ``viz`` extra.

Importing this package needs numpy only (no torch, no matplotlib), so the light client's
``milsdk predict --heatmaps DIR`` can use it; the PNG functions import matplotlib when called and, without
it, raise ``MatplotlibMissingError`` (an ``ImportError`` and a ``MILSDKError``) saying
``pip install "milsdk[viz]"``.

- ``wsi`` / ``ctscan``: the reference's canvas helpers (same names and arguments as ``torchmil.visualize``).
- ``normalize``: per-bag attention normalisation, ``"rank"`` (default) or ``"minmax"``.
- ``grid``: coordinates -> patch grid -> RGB canvas coloured with a perceptual colour map (``colors``).
- ``heatmap``: PNG figures, and ``save_bag_heatmap`` (one call per bag, for the CLI).
"""

from milsdk.visualize.colors import COLORMAPS, NAMED_COLORS, apply_colormap, colormap_lut, to_rgb
from milsdk.visualize.ctscan import draw_heatmap_ctscan, draw_slices_contour, slices_to_canvas
from milsdk.visualize.errors import MatplotlibMissingError, VisualizeError
from milsdk.visualize.grid import GridLayout, attention_canvas, attention_grid, grid_layout
from milsdk.visualize.heatmap import (
    require_matplotlib,
    ct_heatmap_figure,
    render_ct_heatmap,
    render_wsi_heatmap,
    save_bag_heatmap,
    wsi_heatmap_figure,
)
from milsdk.visualize.normalize import NORMALIZE_METHODS, normalization_label, normalize_attention
from milsdk.visualize.wsi import draw_heatmap_wsi, draw_patches_contour, patches_to_canvas

__all__ = [
    "patches_to_canvas",
    "draw_patches_contour",
    "draw_heatmap_wsi",
    "slices_to_canvas",
    "draw_slices_contour",
    "draw_heatmap_ctscan",
    "NORMALIZE_METHODS",
    "normalize_attention",
    "normalization_label",
    "GridLayout",
    "grid_layout",
    "attention_grid",
    "attention_canvas",
    "COLORMAPS",
    "NAMED_COLORS",
    "to_rgb",
    "colormap_lut",
    "apply_colormap",
    "wsi_heatmap_figure",
    "render_wsi_heatmap",
    "ct_heatmap_figure",
    "render_ct_heatmap",
    "require_matplotlib",
    "save_bag_heatmap",
    "VisualizeError",
    "MatplotlibMissingError",
]
