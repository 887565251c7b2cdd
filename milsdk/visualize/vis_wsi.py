"""torchmil path ``torchmil.visualize.vis_wsi``: re-exports ``milsdk.visualize.wsi``."""

from milsdk.visualize.wsi import draw_heatmap_wsi, draw_patches_contour, patches_to_canvas

__all__ = ["draw_heatmap_wsi", "draw_patches_contour", "patches_to_canvas"]
