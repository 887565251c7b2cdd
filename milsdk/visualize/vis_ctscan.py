"""torchmil path ``torchmil.visualize.vis_ctscan``: re-exports ``milsdk.visualize.ctscan``."""

from milsdk.visualize.ctscan import draw_heatmap_ctscan, draw_slices_contour, slices_to_canvas

__all__ = ["draw_heatmap_ctscan", "draw_slices_contour", "slices_to_canvas"]
