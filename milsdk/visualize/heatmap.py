"""Attention heatmap figures and PNGs (matplotlib, imported lazily; the rest of the package is numpy only).

- WSI: the bag's attention, normalised per bag, coloured on its patch grid (``attention_canvas``), optionally
  over a slide thumbnail; a colour bar whose label names the normalisation rule; the bag's prediction as
  title.
- CT: one colour block per slice in a strip (under the slice images when given) and the raw attention as a
  line.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, not pyplot: no global state, no backend
switch, safe in threads and servers. The layout is fixed (no ``bbox_inches="tight"``), so a PNG's pixels map
to figure coordinates exactly: the ``*_figure`` functions return the figure the ``render_*`` functions save.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from milsdk.visualize.colors import colormap_lut
from milsdk.visualize.errors import INSTALL_HINT, MatplotlibMissingError, VisualizeError
from milsdk.visualize.grid import GridLayout, attention_canvas, attention_grid, grid_layout
from milsdk.visualize.normalize import _as_attention, normalization_label, normalize_attention

__all__ = [
    "require_matplotlib",
    "wsi_heatmap_figure",
    "render_wsi_heatmap",
    "ct_heatmap_figure",
    "render_ct_heatmap",
    "save_bag_heatmap",
]

_HEATMAP_LONG_SIDE_IN = 6.0
_CT_WIDTH_IN = 8.0
_MAX_SIDE_IN = 40.0
_MIN_CELL_PX = 2  # figures grow so that no patch / slice is thinner than this (nearest sampling drops none)
_MARGIN_IN = 0.25
_CBAR_H_IN = 0.15
_CBAR_LABEL_IN = 0.55
_MIN_CBAR_W_IN = 5.0  # room for the colour-bar label that names the rule


def require_matplotlib() -> None:
    """Raise ``MatplotlibMissingError`` (one line, with the install hint) unless the PNG writers can run; lets a
    caller fail before any work instead of at its first heatmap."""
    _matplotlib()


def _matplotlib() -> SimpleNamespace:
    """The matplotlib pieces used here, or a one-line install hint."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import ListedColormap, Normalize
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MatplotlibMissingError(
            f"writing heatmap PNGs needs matplotlib, which is not installed: {INSTALL_HINT}"
        ) from exc
    return SimpleNamespace(
        Figure=Figure,
        FigureCanvasAgg=FigureCanvasAgg,
        ScalarMappable=ScalarMappable,
        ListedColormap=ListedColormap,
        Normalize=Normalize,
    )


def _figure(mpl: SimpleNamespace, width_in: float, height_in: float, dpi: float):
    fig = mpl.Figure(figsize=(width_in, height_in), dpi=dpi, facecolor="white")
    mpl.FigureCanvasAgg(fig)
    return fig


def _colorbar(
    mpl: SimpleNamespace, fig, rect_in: tuple[float, float, float, float], cmap: str, normalize: str
):
    """A horizontal 0-1 colour bar at ``rect_in`` (left, bottom, width, height; inches) naming the rule."""
    fw, fh = fig.get_size_inches()
    left, bottom, width, height = rect_in
    cax = fig.add_axes((left / fw, bottom / fh, width / fw, height / fh), label="colorbar")
    mappable = mpl.ScalarMappable(norm=mpl.Normalize(0.0, 1.0), cmap=mpl.ListedColormap(colormap_lut(cmap)))
    bar = fig.colorbar(mappable, cax=cax, orientation="horizontal")
    bar.set_label(normalization_label(normalize), fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return bar


def _grow(base_in: float, cells: float, dpi: float) -> float:
    """A side of ``base_in`` inches, grown (up to 40 in) to give ``cells`` cells at least 2 pixels each."""
    return min(max(base_in, _MIN_CELL_PX * cells / dpi), _MAX_SIDE_IN)


def _title(fig, title: str | None) -> None:
    if title:
        fig.suptitle(title, fontsize=10, y=1.0 - 0.08 / fig.get_size_inches()[1], va="top")


def _as_thumbnail(thumbnail: np.ndarray) -> np.ndarray:
    thumb = np.asarray(thumbnail)
    if thumb.ndim != 3 or thumb.shape[2] not in (3, 4) or thumb.dtype != np.uint8 or 0 in thumb.shape:
        raise VisualizeError(
            f"thumbnail: expected an (H, W, 3) uint8 RGB image, got shape {thumb.shape}, dtype {thumb.dtype}"
        )
    return thumb


def _slide_bounds(thumb: np.ndarray, layout: GridLayout, slide_size: tuple[float, float] | None) -> tuple:
    """(left, right, bottom, top) the thumbnail covers, in the coordinates' units.

    Without ``slide_size`` the thumbnail is assumed to show the slide from (0, 0) at the smallest scale that
    contains every patch, keeping its aspect ratio (exact when the tissue reaches the slide's far edge on one
    axis).
    """
    if slide_size is None:
        _, right, bottom, _ = layout.extent
        scale = max(right / thumb.shape[1], bottom / thumb.shape[0])
        width, height = thumb.shape[1] * scale, thumb.shape[0] * scale
    else:
        width, height = (float(v) for v in slide_size)
        if not (width > 0 and height > 0):
            raise VisualizeError(f"slide_size must be a positive (width, height), got {slide_size!r}")
    return (0.0, width, height, 0.0)


def wsi_heatmap_figure(
    coords: np.ndarray,
    attention: np.ndarray,
    *,
    title: str | None = None,
    thumbnail: np.ndarray | None = None,
    patch_size: float | None = None,
    slide_size: tuple[float, float] | None = None,
    cmap: str = "viridis",
    normalize: str = "rank",
    alpha: float = 0.5,
    dpi: float = 150,
):
    """Build the WSI heatmap figure that ``render_wsi_heatmap`` saves.

    Args:
        coords: (N, 2) x, y of each patch (pixels or grid units; grid rule in ``milsdk.visualize.grid``).
        attention: (N,) raw attention of one bag; normalised here with ``normalize``.
        title: e.g. the bag's name and prediction.
        thumbnail: optional (h, w, 3) uint8 RGB (or RGBA) slide thumbnail drawn under the heatmap.
        patch_size: patch spacing in the coordinates' units; inferred when None.
        slide_size: (width, height) of the slide in the coordinates' units, which the thumbnail covers;
            inferred when None (see ``_slide_bounds``).
        cmap: one of ``milsdk.visualize.COLORMAPS``.
        normalize: ``"rank"`` or ``"minmax"`` (``normalize_attention``); the colour-bar label names it.
        alpha: opacity of the heatmap over the thumbnail (without a thumbnail the heatmap is opaque).
        dpi: pixels per inch.

    Returns:
        a ``matplotlib.figure.Figure`` with axes labelled ``"heatmap"`` and ``"colorbar"``.
    """
    mpl = _matplotlib()
    values = normalize_attention(attention, normalize)
    layout = grid_layout(coords, patch_size)
    grid = attention_grid(coords, values, patch_size)
    if not 0 <= alpha <= 1:
        raise VisualizeError(f"alpha must lie in [0, 1], got {alpha}")
    rgba = np.zeros((*grid.shape, 4), dtype=np.uint8)
    rgba[..., :3] = attention_canvas(grid, cmap)
    rgba[..., 3] = np.where(np.isnan(grid), 0, 255 if thumbnail is None else round(255 * alpha))

    thumb = None if thumbnail is None else _as_thumbnail(thumbnail)
    bounds = layout.extent if thumb is None else _slide_bounds(thumb, layout, slide_size)
    width, height = bounds[1] - bounds[0], bounds[2] - bounds[3]
    long_side_in = _grow(_HEATMAP_LONG_SIDE_IN, max(width, height) / layout.step, dpi)
    scale = long_side_in / max(width, height)
    map_w, map_h = max(width * scale, 0.3), max(height * scale, 0.3)
    top = 0.45 if title else _MARGIN_IN
    cbar_w = max(map_w, _MIN_CBAR_W_IN)
    fig_w = cbar_w + 2 * _MARGIN_IN
    fig_h = _CBAR_LABEL_IN + _CBAR_H_IN + 0.3 + map_h + top
    fig = _figure(mpl, fig_w, fig_h, dpi)

    map_bottom = _CBAR_LABEL_IN + _CBAR_H_IN + 0.3
    ax = fig.add_axes(
        ((fig_w - map_w) / 2 / fig_w, map_bottom / fig_h, map_w / fig_w, map_h / fig_h), label="heatmap"
    )
    if thumb is not None:
        ax.imshow(thumb, extent=bounds)
    ax.imshow(rgba, extent=layout.extent, interpolation="nearest")
    ax.set_xlim(bounds[0], bounds[1])
    ax.set_ylim(bounds[2], bounds[3])
    ax.set_aspect("equal")
    ax.set_axis_off()
    _colorbar(mpl, fig, (_MARGIN_IN, _CBAR_LABEL_IN, cbar_w, _CBAR_H_IN), cmap, normalize)
    _title(fig, title)
    return fig


def render_wsi_heatmap(
    coords: np.ndarray,
    attention: np.ndarray,
    path: str | Path,
    title: str | None = None,
    thumbnail: np.ndarray | None = None,
    *,
    patch_size: float | None = None,
    slide_size: tuple[float, float] | None = None,
    cmap: str = "viridis",
    normalize: str = "rank",
    alpha: float = 0.5,
    dpi: float = 150,
) -> Path:
    """Write one WSI bag's attention heatmap as a PNG (arguments as in ``wsi_heatmap_figure``).

    Returns:
        the path written.
    """
    fig = wsi_heatmap_figure(
        coords,
        attention,
        title=title,
        thumbnail=thumbnail,
        patch_size=patch_size,
        slide_size=slide_size,
        cmap=cmap,
        normalize=normalize,
        alpha=alpha,
        dpi=dpi,
    )
    fig.savefig(path, dpi=dpi, format="png", facecolor="white")
    return Path(path)


def _slice_images(slices: np.ndarray, n: int, target_px: tuple[int, int]) -> np.ndarray:
    """(h', n * w', 3) uint8 row of the slices, subsampled to about ``target_px`` (height, width) each."""
    vol = np.asarray(slices)
    if vol.ndim == 3:
        vol = vol[..., None]
    if vol.ndim != 4 or vol.shape[0] != n or vol.shape[3] not in (1, 3) or 0 in vol.shape:
        raise VisualizeError(
            f"slices: expected ({n}, h, w) or ({n}, h, w, 3) for {n} attention values, got {np.shape(slices)}"
        )
    if vol.dtype != np.uint8:  # e.g. Hounsfield units: one window for the whole scan
        vol = vol.astype(np.float64)
        if not np.all(np.isfinite(vol)):
            raise VisualizeError("slices: some pixel values are not finite")
        lo, hi = vol.min(), vol.max()
        vol = (
            np.zeros(vol.shape, np.uint8)
            if hi == lo
            else np.rint(255 * (vol - lo) / (hi - lo)).astype(np.uint8)
        )
    stride = max(1, int(min(vol.shape[1] / target_px[0], vol.shape[2] / target_px[1])))
    vol = vol[:, ::stride, ::stride]
    if vol.shape[3] == 1:
        vol = np.repeat(vol, 3, axis=3)
    return np.concatenate(list(vol), axis=1)


def _tick_step(n: int, max_ticks: int = 10) -> int:
    """Smallest step of the form 1, 2, 5 x 10^k giving at most ``max_ticks`` ticks over n slices."""
    magnitude = 1
    while True:
        for factor in (1, 2, 5):
            if n <= max_ticks * factor * magnitude:
                return factor * magnitude
        magnitude *= 10


def ct_heatmap_figure(
    attention: np.ndarray,
    *,
    slices: np.ndarray | None = None,
    title: str | None = None,
    cmap: str = "viridis",
    normalize: str = "rank",
    dpi: float = 150,
):
    """Build the CT figure that ``render_ct_heatmap`` saves.

    Top to bottom: the slice images (when given; slice i in column block i, stretched to the block when it is
    not square, i.e. outside 4-16 slices), the strip (slice i's normalised attention coloured over x in
    [i, i + 1)), the raw attention per slice as a line, and the colour bar naming the normalisation rule.

    Args:
        attention: (N,) raw attention, one value per slice, in slice order.
        slices: optional (N, h, w) or (N, h, w, 3) images; uint8 as is, other dtypes min-max scaled over the
            scan.
        title: e.g. the scan's name and prediction.
        cmap: one of ``milsdk.visualize.COLORMAPS``.
        normalize: ``"rank"`` or ``"minmax"``.
        dpi: pixels per inch.

    Returns:
        a ``matplotlib.figure.Figure`` with axes labelled ``"slices"`` (when given), ``"strip"``, ``"line"``
        and ``"colorbar"``; all share x in [0, N].
    """
    mpl = _matplotlib()
    raw = _as_attention(attention)
    values = normalize_attention(raw, normalize)
    n = raw.shape[0]
    left, right = 0.8, 0.3
    content_w = _grow(_CT_WIDTH_IN, n, dpi)
    slices_h = 0.0 if slices is None else float(np.clip(content_w / n, 0.5, 2.0))
    strip_h, line_h, gap = 0.3, 1.6, 0.08
    top = 0.45 if title else _MARGIN_IN
    line_bottom = _CBAR_LABEL_IN + _CBAR_H_IN + 0.55
    strip_bottom = line_bottom + line_h + gap
    slices_bottom = strip_bottom + strip_h + gap
    fig_w = left + content_w + right
    fig_h = slices_bottom + slices_h + top
    fig = _figure(mpl, fig_w, fig_h, dpi)

    def panel(bottom: float, height: float, label: str):
        ax = fig.add_axes((left / fig_w, bottom / fig_h, content_w / fig_w, height / fig_h), label=label)
        ax.set_xlim(0, n)
        return ax

    if slices is not None:
        ax = panel(slices_bottom, slices_h, "slices")
        block_px = (max(16, int(slices_h * dpi)), max(16, int(content_w * dpi / n)))
        ax.imshow(_slice_images(slices, n, block_px), extent=(0, n, 1, 0), aspect="auto", cmap="gray")
        ax.set_axis_off()

    ax = panel(strip_bottom, strip_h, "strip")
    ax.imshow(
        attention_canvas(values[None, :], cmap), extent=(0, n, 1, 0), aspect="auto", interpolation="nearest"
    )
    ax.set_xticks([])
    ax.set_yticks([])

    ax = panel(line_bottom, line_h, "line")
    centres = np.arange(n) + 0.5
    ax.plot(centres, raw, color="0.2", linewidth=1, marker="o" if n <= 64 else None, markersize=3)
    shown = np.arange(0, n, _tick_step(n))
    ax.set_xticks(shown + 0.5, labels=[str(i) for i in shown])
    ax.set_xlim(0, n)
    ax.set_xlabel("slice", fontsize=8)
    ax.set_ylabel("attention (raw)", fontsize=8)
    ax.tick_params(labelsize=7)

    _colorbar(mpl, fig, (left, _CBAR_LABEL_IN, content_w, _CBAR_H_IN), cmap, normalize)
    _title(fig, title)
    return fig


def render_ct_heatmap(
    attention: np.ndarray,
    path: str | Path,
    slices: np.ndarray | None = None,
    title: str | None = None,
    *,
    cmap: str = "viridis",
    normalize: str = "rank",
    dpi: float = 150,
) -> Path:
    """Write one CT bag's per-slice attention as a PNG (arguments as in ``ct_heatmap_figure``).

    Returns:
        the path written.
    """
    fig = ct_heatmap_figure(attention, slices=slices, title=title, cmap=cmap, normalize=normalize, dpi=dpi)
    fig.savefig(path, dpi=dpi, format="png", facecolor="white")
    return Path(path)


def _file_stem(bag_name: str) -> str:
    """A file-system-safe stem: runs of characters outside [A-Za-z0-9._-] become "_"."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(bag_name)).strip("._")
    return stem or "bag"


def save_bag_heatmap(
    out_dir: str | Path,
    bag_name: str,
    attention: np.ndarray,
    coords: np.ndarray | None = None,
    title: str | None = None,
    thumbnail: np.ndarray | None = None,
    *,
    patch_size: float | None = None,
    slide_size: tuple[float, float] | None = None,
    normalize: str = "rank",
    cmap: str = "viridis",
) -> Path:
    """Write one bag's heatmap PNG into ``out_dir``: the WSI heatmap when coords are given, else the CT strip.

    The file is ``out_dir / f"{stem}.png"`` with ``stem`` the bag name made file-system safe (characters
    outside [A-Za-z0-9._-] become "_"); ``out_dir`` is created if needed.

    Args:
        out_dir: folder for the PNGs.
        bag_name: the bag's name, e.g. the input file's stem.
        attention: (N,) the bag's raw attention (padding removed).
        coords: optional (N, 2) x, y patch coordinates (WSI); None for a CT scan / a bag without positions.
        title: e.g. ``"slide_001: tumor (p = 0.93)"``.
        thumbnail: optional (h, w, 3) uint8 slide thumbnail (WSI only).
        patch_size, slide_size: see ``wsi_heatmap_figure`` (WSI only).
        normalize: ``"rank"`` or ``"minmax"``.
        cmap: one of ``milsdk.visualize.COLORMAPS``.

    Returns:
        the path of the PNG written.
    """
    if coords is None and (thumbnail is not None or patch_size is not None or slide_size is not None):
        raise VisualizeError(
            f"bag {bag_name!r}: thumbnail, patch_size and slide_size need coords (a WSI bag)"
        )
    _matplotlib()  # fail on a missing extra before creating folders
    path = Path(out_dir) / f"{_file_stem(bag_name)}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    if coords is None:
        return render_ct_heatmap(attention, path, title=title, cmap=cmap, normalize=normalize)
    return render_wsi_heatmap(
        coords,
        attention,
        path,
        title=title,
        thumbnail=thumbnail,
        patch_size=patch_size,
        slide_size=slide_size,
        cmap=cmap,
        normalize=normalize,
    )
