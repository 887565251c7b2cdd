"""DeepGCN layer: a graph convolution with normalisation, activation and a skip connection (Li et al., ICCV 2019,
"DeepGCNs: Can GCNs Go as Deep as CNNs?"; the pre-activation 'res+' form from Li et al., 2020, "DeeperGCN")."""

from __future__ import annotations

import torch

from milsdk.nn.gnns.gnn_identity import GNNIdentity

__all__ = ["DeepGCNLayer"]

_BLOCKS = ("plain", "res", "res+", "dense")


class DeepGCNLayer(torch.nn.Module):
    r"""One DeepGCN block around a graph convolution.

    .. math::
        \text{res+}: \; Y = X + \operatorname{conv}(\operatorname{drop}(\operatorname{act}(\operatorname{norm}(X))))

        \text{plain / res / dense}: \; H = \operatorname{act}(\operatorname{norm}(\operatorname{conv}(X))), \quad
        Y = \operatorname{drop}(H), \; \operatorname{drop}(X + H), \; \operatorname{drop}([X, H])

    Args:
        conv: graph convolution taking ``(x, adj=, mask=, edge_index=, edge_weight=)`` like every milsdk GNN
            block (default :class:`GNNIdentity`).
        norm: normalisation module over the features (default identity), e.g. ``LayerNorm``.
        act: activation module (default identity).
        block: 'plain', 'res', 'res+' or 'dense' (the skip connection).
        dropout: dropout rate.
    """

    def __init__(
        self,
        conv: torch.nn.Module | None = None,
        norm: torch.nn.Module | None = None,
        act: torch.nn.Module | None = None,
        block: str = "plain",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if block not in _BLOCKS:
            raise ValueError(f"DeepGCNLayer: block must be one of {_BLOCKS}, got {block!r}")
        self.conv = conv if conv is not None else GNNIdentity()
        self.norm = norm if norm is not None else torch.nn.Identity()
        self.act = act if act is not None else torch.nn.Identity()
        self.dropout = torch.nn.Dropout(dropout)
        self.block = block

    def forward(
        self,
        x: torch.Tensor,
        adj: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        edge_index: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Apply the block.

        Args:
            x: (B, N, D) node features.
            adj: (B, N, N) dense or sparse adjacency, or None when the edge list is given.
            mask: (B, N) True / 1 = real node.
            edge_index: (B, 2, E) int64; edge_weight: (B, E).

        Returns:
            (B, N, D_out), or (B, N, D + D_out) for 'dense'.
        """
        if self.block == "res+":
            y = self.dropout(self.act(self.norm(x)))
            y = self.conv(y, adj=adj, mask=mask, edge_index=edge_index, edge_weight=edge_weight)
            return y + x
        y = self.conv(x, adj=adj, mask=mask, edge_index=edge_index, edge_weight=edge_weight)
        y = self.act(self.norm(y))
        if self.block == "res":
            y = y + x
        elif self.block == "dense":
            y = torch.cat([x, y], dim=-1)
        return self.dropout(y)

    def extra_repr(self) -> str:
        return f"block={self.block!r}"
