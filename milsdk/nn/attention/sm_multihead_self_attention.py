r"""Multi-head self-attention whose output is smoothed over the bag graph by Sm (Castro-Macías et al.,
NeurIPS 2024, "Sm: enhanced localization in Multiple Instance Learning for medical imaging
classification")."""

from __future__ import annotations

import torch

from milsdk.nn.adjacency import resolve_edges
from milsdk.nn.attention.multihead_self_attention import MultiheadSelfAttention
from milsdk.nn.sm import Sm

__all__ = ["SmMultiheadSelfAttention"]


class SmMultiheadSelfAttention(MultiheadSelfAttention):
    r"""Masked multi-head self-attention followed by Sm on the bag graph.

    .. math::
        Y = \operatorname{Sm}\big(\operatorname{MHSA}(X, \text{mask}),\ A\big)

    The attention is :class:`~milsdk.nn.attention.MultiheadSelfAttention`'s (exact, query-chunked: memory
    linear in N, also in exported ONNX); Sm multiplies by A only through the edge list (O(E)). Padded tokens
    get no attention weight and no edges, and their outputs are 0, so real outputs do not depend on padding.
    With ``return_att`` the (B, H, N, N) weights are 0 on masked keys and padded query rows (the reference
    returns NaN there, defect 8.2).

    Args:
        in_dim: token size D.
        out_dim: output size (default ``in_dim``).
        att_dim: total query/key/value size over the heads.
        n_heads: number of heads; must divide ``att_dim``.
        dropout: dropout on the attention weights (training only).
        sm_alpha: 'trainable' or a fixed alpha in [0, 1) (see :class:`~milsdk.nn.sm.Sm`).
        sm_mode: 'approx' or 'exact'.
        sm_steps: iterations of the approx mode.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int | None = None,
        att_dim: int = 512,
        n_heads: int = 4,
        dropout: float = 0.0,
        sm_alpha: float | str = "trainable",
        sm_mode: str = "approx",
        sm_steps: int = 10,
    ) -> None:
        super().__init__(in_dim, out_dim=out_dim, att_dim=att_dim, n_heads=n_heads, dropout=dropout)
        self.sm = Sm(alpha=sm_alpha, num_steps=sm_steps, mode=sm_mode)

    def attend_edges(
        self,
        x: torch.Tensor,
        edge_index: torch.Tensor,
        edge_weight: torch.Tensor,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Smoothed self-attention on a resolved edge list, with one fixed return type (for TorchScript
        callers).

        Args:
            x: (B, N, in_dim); edge_index: (B, 2, E) int64; edge_weight: (B, E); mask: (B, N) or None.
            need_weights: also return the (B, H, N, N) attention weights.

        Returns:
            y: (B, N, out_dim); weights (B, H, N, N) or an empty tensor.
        """
        y, weights = self.attend(x, mask, need_weights)
        return self.sm(y, None, mask, edge_index, edge_weight), weights

    def forward(
        self,
        X: torch.Tensor,
        adj: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        return_att: bool = False,
        edge_index: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Self-attention over each bag's real tokens, smoothed over its graph.

        Args:
            X: (B, N, in_dim) tokens.
            adj: (B, N, N) dense or sparse adjacency, or None when ``edge_index`` is given.
            mask: (B, N) True / 1 = real token (bool or uint8); None = all real.
            return_att: also return the attention weights (forms the N x N matrix).
            edge_index: (B, 2, E) int64 edge list (used instead of ``adj``).
            edge_weight: (B, E) weights of ``edge_index`` (None = 1).

        Returns:
            y: (B, N, out_dim) (0 at padded tokens); with ``return_att`` also att (B, H, N, N).
        """
        edge_index, edge_weight = resolve_edges(X, adj, edge_index, edge_weight, mask)
        y, att = self.attend_edges(X, edge_index, edge_weight, mask, return_att)
        if return_att:
            return y, att
        return y
