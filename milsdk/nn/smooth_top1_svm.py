"""Smooth top-1 multiclass SVM loss (Berrada, Zisserman, Kumar, ICLR 2018, "Smooth Loss Functions for Deep
Top-k Classification"), the instance loss of CLAM (Lu et al., Nature BME 2021)."""

from __future__ import annotations

import math

import torch

__all__ = ["SmoothTop1SVM"]

_REDUCTIONS = ("mean", "sum", "none")


class SmoothTop1SVM(torch.nn.Module):
    r"""Smooth top-1 SVM loss of scores ``x`` (n, C) for class indices ``y`` (n,).

    With :math:`\Delta_j = \alpha\,[j \ne y]` the hard (Crammer–Singer) loss and its smooth version are

    .. math::
        \ell(x, y) = \max_j \big(x_j + \Delta_j\big) - x_y, \qquad
        \ell_\tau(x, y) = \tau \log \sum_j \exp\!\Big(\frac{x_j + \Delta_j - x_y}{\tau}\Big).

    As in the paper's code, a sample whose best score leads the second best by at least
    :math:`\tau \log 10^3` takes the hard loss (there the two agree to within :math:`\approx 10^{-3}\tau`);
    every other sample takes the smooth one. The choice is made per sample and carries no gradient.

    Args:
        n_classes: number of classes C (>= 2).
        alpha: margin :math:`\alpha`.
        tau: temperature :math:`\tau` (> 0).
        reduction: 'mean' (default, as in the reference), 'sum' or 'none' (per-sample losses (n,)).

    Shapes:
        x: (n, C) float scores; y: (n,) or (n, 1) class indices (integer or integer-valued float).
        Returns a scalar, or (n,) with ``reduction='none'``. An empty batch (n = 0) gives 0 for 'mean'.
    """

    def __init__(self, n_classes: int, alpha: float = 1.0, tau: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"SmoothTop1SVM: n_classes must be >= 2, got {n_classes}")
        if not tau > 0:
            raise ValueError(f"SmoothTop1SVM: tau must be > 0, got {tau}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"SmoothTop1SVM: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.n_classes, self.alpha, self.tau, self.reduction = n_classes, float(alpha), float(tau), reduction
        self.hard_gap = self.tau * math.log(1e3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss of scores x (n, C) for targets y (n,); see the class docstring."""
        if x.dim() != 2 or x.shape[1] != self.n_classes:
            raise ValueError(f"SmoothTop1SVM: scores must be (n, {self.n_classes}), got {list(x.shape)}")
        y = y.reshape(-1).long()
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"SmoothTop1SVM: {x.shape[0]} score rows but {y.shape[0]} targets")
        classes = torch.arange(self.n_classes, device=x.device)
        margin = self.alpha * (classes.unsqueeze(0) != y.unsqueeze(1)).to(x.dtype)  # (n, C)
        x_y = x.gather(1, y.unsqueeze(1))  # (n, 1)
        augmented = x + margin - x_y
        hard_loss = augmented.amax(dim=1)
        smooth_loss = self.tau * torch.logsumexp(augmented / self.tau, dim=1)
        top2 = x.detach().topk(2, dim=1).values
        hard = (top2[:, 0] - top2[:, 1]) >= self.hard_gap
        loss = torch.where(hard, hard_loss, smooth_loss)
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum()
        return loss.sum() / max(loss.shape[0], 1)

    def extra_repr(self) -> str:
        return f"n_classes={self.n_classes}, alpha={self.alpha}, tau={self.tau}, reduction={self.reduction!r}"
