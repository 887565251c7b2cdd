"""Per-bag attention normalisation: the rule that maps one bag's attention to [0, 1] before colouring.

Attention sums to 1 over a bag, so raw values shrink with bag size and a few patches often take most of the
mass; a colour scale on raw values would show one bright patch on a uniformly dark slide. Two rules:

- ``"rank"`` (default): the rank of each value among the bag's K distinct values, scaled to [0, 1]:
  ``r_i = (k_i - 1) / (K - 1)`` where a_i is the k_i-th smallest distinct value. Without ties this is the
  percentile rank ``(rank_i - 1) / (N - 1)``; tied values share one colour, the lowest group 0 and the highest
  1 (a bag with all its attention on one patch: that patch 1, every other 0). Robust to a few huge values, but
  equal steps in colour are equal steps in *order*, not in attention.
- ``"minmax"``: ``(a_i - min) / (max - min)``; colour is proportional to attention, so one dominant patch
  leaves the rest near 0.

Under both rules a constant bag (no contrast) and a one-instance bag map to zeros. Every figure names the rule
in its colour-bar label (``normalization_label``).
"""

from __future__ import annotations

import numpy as np

from milsdk.visualize.errors import VisualizeError

__all__ = ["NORMALIZE_METHODS", "normalize_attention", "normalization_label"]

NORMALIZE_METHODS: tuple[str, ...] = ("rank", "minmax")

_LABELS = {
    "rank": "attention rank within the bag, scaled to [0, 1] (0 = lowest, 1 = highest)",
    "minmax": "attention, min-max scaled within the bag (0 = min, 1 = max)",
}


def _as_attention(attention: np.ndarray, name: str = "attention") -> np.ndarray:
    """Validate one bag's attention: (N,) finite, N >= 1; returns float64 (N,)."""
    att = np.asarray(attention, dtype=np.float64)
    if att.ndim != 1 or att.shape[0] == 0:
        raise VisualizeError(
            f"{name}: expected one bag's attention of shape (N,) with N >= 1, got {att.shape}"
        )
    if not np.all(np.isfinite(att)):
        raise VisualizeError(
            f"{name}: {int(np.sum(~np.isfinite(att)))} of {att.shape[0]} values are not finite"
        )
    return att


def _check_method(method: str) -> None:
    if method not in NORMALIZE_METHODS:
        raise VisualizeError(f"unknown normalisation {method!r}: expected one of {list(NORMALIZE_METHODS)}")


def normalize_attention(attention: np.ndarray, method: str = "rank") -> np.ndarray:
    """Map one bag's attention to [0, 1] with a documented rule (see the module docstring).

    Args:
        attention: (N,) finite floats, one value per instance.
        method: ``"rank"`` (rank among the distinct values, scaled) or ``"minmax"``.

    Returns:
        (N,) float64 in [0, 1]; zeros when all values are equal or N == 1.
    """
    _check_method(method)
    att = _as_attention(attention)
    lo, hi = att.min(), att.max()
    if hi == lo:
        return np.zeros(att.shape[0])
    if method == "minmax":
        return (att - lo) / (hi - lo)
    distinct, inverse = np.unique(att, return_inverse=True)
    return inverse.reshape(-1) / (distinct.shape[0] - 1)


def normalization_label(method: str) -> str:
    """Colour-bar label naming the normalisation rule (``"rank"`` or ``"minmax"``)."""
    _check_method(method)
    return _LABELS[method]
