r"""Attention pooling with the Sm smoothing operator (Castro-Macías et al., NeurIPS 2024, "Sm: enhanced
localization in Multiple Instance Learning for medical imaging classification"), on edge lists."""

from __future__ import annotations

import torch

from milsdk.nn.adjacency import resolve_edges
from milsdk.nn.masked import masked_softmax
from milsdk.nn.mlp import make_activation
from milsdk.nn.sm import Sm

__all__ = ["SmAttentionPool"]

_WHERE = ("early", "mid", "late", "none")


class SmAttentionPool(torch.nn.Module):
    r"""ABMIL attention pooling whose attention is smoothed over the bag graph by Sm.

    .. math::
        \text{early: } X \leftarrow \operatorname{Sm}(X),\quad f = w^\top \operatorname{act}(W X)
        \qquad
        \text{mid: } f = w^\top \operatorname{act}(\operatorname{Sm}(W X))
        \qquad
        \text{late: } f = \operatorname{Sm}(w^\top \operatorname{act}(W X))

    then :math:`s = \operatorname{softmax}_{i \in \text{real}}(f)` and :math:`z = \sum_i s_i x_i` (with the
    smoothed X in 'early' mode, as in the reference). 'none' is plain attention pooling. Sm is skipped (the
    identity, as in the reference) when ``sm_alpha == 0`` or, in approx mode, ``sm_steps == 0``.

    ``spectral_norm=True`` puts spectral normalisation on the linear layers after Sm (the paper's way to keep
    the Dirichlet energy decreasing): both for 'early' and 'none', the second for 'mid', none for 'late' (the
    reference's choice). Spectral normalisation estimates sigma by a power iteration that runs in training
    mode only; in eval it uses the stored estimate (deterministic).

    Graph input: ``adj`` (B, N, N) dense or sparse, or the edge list ``edge_index`` (B, 2, E) /
    ``edge_weight`` (B, E); both give the same result (see :mod:`milsdk.nn.adjacency`). Padded instances get
    no weight and do not take part in the smoothing, so real outputs do not depend on padding.

    Args:
        in_dim: instance size D.
        att_dim: hidden size of the attention MLP.
        act: 'tanh', 'relu' or 'gelu'.
        sm_mode: 'approx' or 'exact' (see :class:`~milsdk.nn.sm.Sm`).
        sm_alpha: 'trainable' or a fixed alpha in [0, 1).
        sm_steps: iterations of the approx mode.
        sm_where: 'early', 'mid', 'late' or 'none'.
        spectral_norm: spectral normalisation of the linear layers after Sm.
    """

    def __init__(
        self,
        in_dim: int,
        att_dim: int = 128,
        act: str = "gelu",
        sm_mode: str = "approx",
        sm_alpha: float | str = "trainable",
        sm_steps: int = 10,
        sm_where: str = "early",
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        if act not in ("tanh", "relu", "gelu"):
            raise ValueError(f"SmAttentionPool: act must be 'tanh', 'relu' or 'gelu', got {act!r}")
        if sm_where not in _WHERE:
            raise ValueError(f"SmAttentionPool: sm_where must be one of {_WHERE}, got {sm_where!r}")
        self.in_dim, self.att_dim, self.act_name = in_dim, att_dim, act
        self.sm_mode, self.sm_alpha, self.sm_steps = sm_mode, sm_alpha, sm_steps
        self.sm_where, self.spectral_norm = sm_where, spectral_norm
        skip = (
            sm_where == "none"
            or (not isinstance(sm_alpha, str) and float(sm_alpha) == 0.0)
            or (sm_mode == "approx" and sm_steps <= 0)
        )
        self.sm = None if skip else Sm(alpha=sm_alpha, num_steps=sm_steps, mode=sm_mode)
        self.proj1 = torch.nn.Linear(in_dim, att_dim)
        self.proj2 = torch.nn.Linear(att_dim, 1, bias=False)
        self.act = make_activation(act)
        if spectral_norm:
            parametrize = torch.nn.utils.parametrizations.spectral_norm
            if sm_where in ("early", "none"):
                self.proj1 = parametrize(self.proj1)
            if sm_where in ("early", "mid", "none"):
                self.proj2 = parametrize(self.proj2)

    def _smooth(
        self,
        where: str,
        T: torch.Tensor,
        edge_index: torch.Tensor,
        edge_weight: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        if self.sm is not None and self.sm_where == where:
            return self.sm(T, None, mask, edge_index, edge_weight)
        return T

    def pool_with_logits(
        self,
        X: torch.Tensor,
        edge_index: torch.Tensor,
        edge_weight: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The pooling on an edge list, with one fixed return type (for callers compiled by TorchScript).

        Args:
            X: (B, N, D); edge_index: (B, 2, E) int64; edge_weight: (B, E); mask: (B, N) or None.

        Returns:
            z: (B, D) pooled vector; f: (B, N) attention logits before the masked softmax.
        """
        X = self._smooth("early", X, edge_index, edge_weight, mask)
        H = self._smooth("mid", self.proj1(X), edge_index, edge_weight, mask)
        f = self._smooth("late", self.proj2(self.act(H)), edge_index, edge_weight, mask).squeeze(-1)
        s = masked_softmax(f, mask)
        return torch.bmm(s.unsqueeze(1).to(X.dtype), X).squeeze(1), f

    def forward(
        self,
        X: torch.Tensor,
        adj: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        return_att: bool = False,
        edge_index: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Pool instances into one vector per bag.

        Args:
            X: (B, N, D) instance features.
            adj: (B, N, N) dense or sparse adjacency, or None when ``edge_index`` is given.
            mask: (B, N) True / 1 = real instance (bool or uint8); None = all real.
            return_att: also return the attention logits f.
            edge_index: (B, 2, E) int64 edge list (used instead of ``adj``).
            edge_weight: (B, E) weights of ``edge_index`` (None = 1).

        Returns:
            z: (B, D); with ``return_att`` also f (B, N), the logits before the masked softmax.
        """
        edge_index, edge_weight = resolve_edges(X, adj, edge_index, edge_weight, mask)
        z, f = self.pool_with_logits(X, edge_index, edge_weight, mask)
        if return_att:
            return z, f
        return z

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, att_dim={self.att_dim}, act={self.act_name!r}, "
            f"sm_where={self.sm_where!r}, "
            f"spectral_norm={self.spectral_norm}"
        )
