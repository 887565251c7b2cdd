"""Colours without matplotlib: named colours and perceptual colour maps as numpy lookups.

Colour maps are stored as 33 anchors (sRGB, 8 bit) sampled evenly from matplotlib's tables and interpolated
linearly; the result stays within 3.1/255 of matplotlib's own ``viridis`` / ``magma`` / ``inferno`` /
``plasma`` on every channel, and the ends (0 and 1) are exact. Keeping the lookup here means array outputs do
not depend on matplotlib being installed, nor on how a matplotlib version renders.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from milsdk.visualize.errors import VisualizeError

__all__ = ["Color", "NAMED_COLORS", "COLORMAPS", "to_rgb", "colormap_lut", "apply_colormap"]

Color = str | Sequence[float]
"""A colour: a name from ``NAMED_COLORS``, ``"#rrggbb"``, or three floats in [0, 1]."""

NAMED_COLORS: dict[str, str] = {
    "tab:blue": "1f77b4",
    "tab:orange": "ff7f0e",
    "tab:green": "2ca02c",
    "tab:red": "d62728",
    "tab:purple": "9467bd",
    "tab:brown": "8c564b",
    "tab:pink": "e377c2",
    "tab:gray": "7f7f7f",
    "tab:olive": "bcbd22",
    "tab:cyan": "17becf",
    "black": "000000",
    "white": "ffffff",
    "red": "ff0000",
    "green": "008000",
    "blue": "0000ff",
}

_ANCHORS: dict[str, str] = {
    "viridis": """440154 470d60 48186a 482374 472d7b 453781 424086 3e4989 3b528b 375b8d 33638d 2f6b8e 2c728e
                  297a8e 26828e 23898e 21918c 1f978b 1f9f88 21a685 27ad81 31b57b 3dbc74 4cc26c 5cc863 6ece58
                  81d34d 95d840 aadc32 c0df25 d5e21a eae51a fde725""",
    "magma": """000004 030312 0a0822 130d34 1d1147 29115a 36106b 440f76 51127c 5d177f 6a1c81 762181 832681
                902a81 9c2e7f aa337d b73779 c23b75 cf4070 db476a e55064 ee5b5e f4695c f9785d fb8761 fd9668
                fea571 feb47b fec287 fed194 fde0a1 fceeb0 fcfdbf""",
    "inferno": """000004 040312 0b0724 150b37 210c4a 2f0a5b 3d0965 4a0c6b 57106e 64156e 71196e 7d1e6d 8a226a
                  972766 a32c61 b0315b bc3754 c63d4d d04545 da4e3c e35933 eb6429 f1711f f67e14 f98c0a fb9b06
                  fcaa0f fbba1f f9c932 f5d949 f2e865 f3f586 fcffa4""",
    "plasma": """0d0887 220690 310597 3f049c 4c02a1 5901a5 6600a7 7201a8 7e03a8 8a09a5 9511a1 a01a9c aa2395
                 b32c8e bc3587 c43e7f cc4778 d24f71 d9586a df6263 e56b5d eb7556 f07f4f f48948 f89441 fb9f3a
                 fdab33 feb72d fdc328 fcd025 f9dd25 f5eb27 f0f921""",
}

COLORMAPS: tuple[str, ...] = tuple(_ANCHORS)
"""Names accepted by ``cmap`` arguments: perceptually uniform maps, low values dark, high values bright."""


def _hex_to_rgb(code: str) -> np.ndarray:
    """(3,) float in [0, 1] from ``"rrggbb"``."""
    return np.array([int(code[i : i + 2], 16) for i in (0, 2, 4)], dtype=np.float64) / 255.0


def to_rgb(color: Color) -> np.ndarray:
    """Resolve a colour to RGB floats.

    Args:
        color: a name from ``NAMED_COLORS`` (``"tab:red"``), ``"#rrggbb"``, or a sequence of three floats in
            [0, 1].

    Returns:
        (3,) float64 in [0, 1].
    """
    if isinstance(color, str):
        code = NAMED_COLORS.get(color.lower())
        if code is None and color.startswith("#") and len(color) == 7:
            code = color[1:]
        if code is None:
            raise VisualizeError(
                f"unknown colour {color!r}: use '#rrggbb', three floats in [0, 1] "
                f"or one of {sorted(NAMED_COLORS)}"
            )
        try:
            return _hex_to_rgb(code)
        except ValueError:
            raise VisualizeError(f"colour {color!r} is not a valid '#rrggbb' code") from None
    try:
        rgb = np.asarray(color, dtype=np.float64)
    except (TypeError, ValueError):
        rgb = np.empty(0)
    if rgb.shape != (3,) or not np.all(np.isfinite(rgb)) or rgb.min() < 0 or rgb.max() > 1:
        raise VisualizeError(f"colour {color!r}: expected three floats in [0, 1]")
    return rgb


def _anchors(cmap: str) -> np.ndarray:
    """(33, 3) float anchors of a colour map."""
    table = _ANCHORS.get(cmap)
    if table is None:
        raise VisualizeError(f"unknown colour map {cmap!r}: expected one of {list(COLORMAPS)}")
    return np.stack([_hex_to_rgb(code) for code in table.split()])


def colormap_lut(cmap: str = "viridis", n: int = 256) -> np.ndarray:
    """Sample a colour map at ``n`` evenly spaced values from 0 to 1.

    Args:
        cmap: one of ``COLORMAPS``.
        n: number of entries (>= 2).

    Returns:
        (n, 3) float64 in [0, 1]; row 0 is the colour of 0, row n-1 the colour of 1.
    """
    return _interpolate(np.linspace(0.0, 1.0, n), _anchors(cmap))


def _interpolate(values: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(..., 3) colours of values in [0, 1] by linear interpolation between evenly spaced anchors."""
    xs = np.linspace(0.0, 1.0, len(anchors))
    flat = values.reshape(-1)
    rgb = np.stack([np.interp(flat, xs, anchors[:, c]) for c in range(3)], axis=-1)
    return rgb.reshape(*values.shape, 3)


def apply_colormap(values: np.ndarray, cmap: str = "viridis") -> np.ndarray:
    """Colour values in [0, 1] with a perceptual colour map.

    Args:
        values: (...) finite floats; values outside [0, 1] are clipped.
        cmap: one of ``COLORMAPS``.

    Returns:
        (..., 3) uint8 RGB.
    """
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise VisualizeError("apply_colormap: values must be finite (mask missing cells before colouring)")
    rgb = _interpolate(np.clip(values, 0.0, 1.0), _anchors(cmap))
    return np.rint(rgb * 255.0).astype(np.uint8)
