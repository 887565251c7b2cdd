"""Parameter-free masked pooling over the instance axis."""

from __future__ import annotations

import torch

from milsdk.nn.masked import as_bool_mask, masked_max

__all__ = ["MeanPool", "MaxPool"]


class MeanPool(torch.nn.Module):
    r"""Masked mean: z_b = \sum_i m_bi x_bi / max(\sum_i m_bi, 1). A bag with no real instance gives 0."""

    def forward(self, X: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """X: (B, N, D), mask: (B, N) -> (B, D)."""
        m = as_bool_mask(mask, X).unsqueeze(-1).to(X.dtype)
        return (X * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


class MaxPool(torch.nn.Module):
    r"""Masked max: z_bd = max_{i: m_bi} x_bid. A bag with no real instance gives 0. Accepts bool or uint8 masks."""

    def forward(self, X: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """X: (B, N, D), mask: (B, N) -> (B, D)."""
        return masked_max(X, mask)
