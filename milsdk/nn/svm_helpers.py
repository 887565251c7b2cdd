"""Helpers of the smooth top-k SVM loss (Berrada, Zisserman, Kumar, ICLR 2018), under torchmil's names:
``log_sum_exp``, the zero-one margin matrix ``delta`` and the hard/smooth split ``detect_large``."""

from __future__ import annotations

import math

import torch

__all__ = ["delta", "detect_large", "log_sum_exp"]


def log_sum_exp(x: torch.Tensor) -> torch.Tensor:
    r"""Row-wise :math:`\log \sum_j \exp(x_{ij})`, stable for large scores.

    Args:
        x: (n, C) scores.

    Returns:
        (n,) values.
    """
    return torch.logsumexp(x, dim=1)


def delta(y: torch.Tensor, labels: torch.Tensor, alpha: float | None = None) -> torch.Tensor:
    r"""Zero-one margin matrix :math:`\Delta_{ij} = \alpha\,[y_i \ne \ell_j]` (``alpha`` None = 1).

    Args:
        y: (n,) class indices.
        labels: (C,) the classes.
        alpha: margin scale.

    Returns:
        (n, C) float32.
    """
    out = (y.reshape(-1, 1) != labels.to(y.device).reshape(1, -1)).float()
    return out if alpha is None else alpha * out


def detect_large(
    x: torch.Tensor, k: int, tau: float, thresh: float
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Which rows take the hard top-k loss: the k-th best score leads the (k+1)-th by at least
    :math:`k\,\tau \log(\text{thresh})` (there the smooth and hard losses agree); no gradient.

    Args:
        x: (n, C) scores, C > k.
        k: the k of top-k.
        tau: temperature.
        thresh: the ratio whose log sets the gap.

    Returns:
        ``(smooth, hard)``, (n,) bool each, complementary.
    """
    top = x.detach().topk(k + 1, dim=1).values
    hard = (top[:, k - 1] - top[:, k]) >= k * tau * math.log(thresh)
    return ~hard, hard
