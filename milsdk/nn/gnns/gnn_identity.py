"""The no-op graph layer (what DeepGCNLayer uses when it is given no convolution)."""

from __future__ import annotations

import torch

__all__ = ["GNNIdentity"]


class GNNIdentity(torch.nn.Module):
    """Returns the node features unchanged; takes (and ignores) the graph arguments of every milsdk GNN block."""

    def forward(
        self,
        x: torch.Tensor,
        adj: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        edge_index: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, N, D) -> x."""
        return x
