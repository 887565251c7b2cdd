"""Masked operations shared by every block: mask normalisation, softmax and weight normalisation.

Conventions: ``mask`` is (B, N), True / 1 = real instance; bool and uint8 are both accepted; ``None`` means all
instances are real. An all-masked row never produces NaN: its weights are all 0.
"""

from __future__ import annotations

import torch

__all__ = ["as_bool_mask", "masked_max", "masked_softmax", "normalize_weights", "MaskedSoftmax"]

# float32 limits are written as literals below (min -3.4028234663852886e38, tiny 1.1754943508222875e-38):
# TorchScript has neither torch.finfo nor module-level constants. Work is done in float32 or wider, where they
# are a finite "minus infinity" for masked scores and a safe floor for normalisers.


def as_bool_mask(mask: torch.Tensor | None, X: torch.Tensor) -> torch.Tensor:
    """Return ``mask`` as a bool (B, N) tensor on X's device; ``None`` becomes all True.

    Args:
        mask: (B, N) bool / integer / float mask, or None.
        X: (B, N, ...) tensor the mask refers to.

    Returns:
        (B, N) bool.
    """
    if mask is None:
        return torch.ones(X.shape[:2], dtype=torch.bool, device=X.device)
    if mask.dtype != torch.bool:
        mask = mask != 0
    return mask.to(X.device)


def masked_softmax(X: torch.Tensor, mask: torch.Tensor | None = None, dim: int = 1) -> torch.Tensor:
    """Softmax over ``dim`` that ignores masked positions.

    softmax_i = mask_i exp(x_i - m) / max(sum_j mask_j exp(x_j - m), tiny), with m the max over real positions.
    Masked positions get exactly 0; a row with no real position is all 0 (finite). Computed in float32 at least,
    so float16 inputs neither overflow nor lose the normaliser.

    Args:
        X: (B, N, ...) scores.
        mask: (B, N) mask (bool or 0/1), broadcast over X's trailing dims; None = all real.
        dim: the instance axis (1 by default, as in the reference).

    Returns:
        Same shape and dtype as X.
    """
    work_dtype = torch.promote_types(X.dtype, torch.float32)
    scores = X.to(work_dtype)
    if mask is None:
        return torch.softmax(scores, dim=dim).to(X.dtype)
    m = as_bool_mask(mask, X)
    while m.dim() < scores.dim():
        m = m.unsqueeze(-1)
    filled = scores.masked_fill(~m, -3.4028234663852886e38)
    shifted = filled - filled.amax(dim=dim, keepdim=True)
    weights = torch.exp(shifted) * m.to(work_dtype)
    denom = weights.sum(dim=dim, keepdim=True).clamp_min(1.1754943508222875e-38)
    return (weights / denom).to(X.dtype)


def masked_max(X: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Max over the real positions of axis 1; a row with no real position gives 0 (never -inf).

    Args:
        X: (B, N, ...) values.
        mask: (B, N) mask (bool or 0/1); None = all real.

    Returns:
        (B, ...) maxima.
    """
    m = as_bool_mask(mask, X)
    while m.dim() < X.dim():
        m = m.unsqueeze(-1)
    top = X.masked_fill(~m, float("-inf")).amax(dim=1)
    return torch.where(m.any(dim=1), top, torch.zeros_like(top))


def normalize_weights(W: torch.Tensor, mask: torch.Tensor | None = None, dim: int = 1) -> torch.Tensor:
    """Scale non-negative weights so that they sum to 1 over the real positions of ``dim``; 0 on padding.

    Args:
        W: (B, N, ...) non-negative weights.
        mask: (B, N) mask; None = all real.
        dim: the instance axis.

    Returns:
        Same shape as W; an all-masked or all-zero row stays 0.
    """
    if mask is not None:
        m = as_bool_mask(mask, W)
        while m.dim() < W.dim():
            m = m.unsqueeze(-1)
        W = W * m.to(W.dtype)
    denom = W.sum(dim=dim, keepdim=True).clamp_min(1.1754943508222875e-38)
    return W / denom


class MaskedSoftmax(torch.nn.Module):
    """Module form of :func:`masked_softmax` (softmax over dim 1)."""

    def forward(self, X: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """X: (B, N, ...), mask: (B, N) -> (B, N, ...)."""
        return masked_softmax(X, mask)
