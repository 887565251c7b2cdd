"""CAMIL's attention pooling (Fourkioti et al., ICLR 2024, "CAMIL: Context-Aware Multiple Instance Learning for
Cancer Detection and Subtyping in Whole Slide Images"): scores from one set of features, pooling another."""

from __future__ import annotations

import torch

from milsdk.nn.attention.attention_pool import AttentionPool
from milsdk.nn.masked import masked_softmax

__all__ = ["CAMILAttentionPool"]


class CAMILAttentionPool(AttentionPool):
    r"""Attention pooling whose scores come from T and whose pooled vectors are M.

    .. math::
        f_i = w^\top \big(\tanh(V t_i) \odot \sigma(U t_i)\big), \qquad
        s = \operatorname{softmax}_{i \in \text{real}}(f), \qquad z = \sum_i s_i\, m_i

    (the gate :math:`\sigma(U t_i)` only when ``gated``). In CAMIL, T is the global context (the Nyström
    layer's output) and M its mix with the local context. The scores are
    :meth:`AttentionPool.attention_logits` with ``act="tanh"`` (the same parameters ``fc1``, ``fc_gated``,
    ``fc2``); :class:`AttentionPool` is the case M = T.

    Args:
        in_dim: instance size D of T.
        att_dim: hidden size of the attention MLP.
        gated: multiply by a sigmoid gate (gated attention).
    """

    def __init__(self, in_dim: int, att_dim: int = 128, gated: bool = False) -> None:
        super().__init__(in_dim=in_dim, att_dim=att_dim, act="tanh", gated=gated)

    def forward_att(
        self, T: torch.Tensor, M: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward(T, M, mask, return_att=True)`` with one fixed return type (what TorchScript callers use)."""
        f = self.attention_logits(T)  # (B, N)
        s = masked_softmax(f, mask)
        return torch.bmm(s.unsqueeze(1), M).squeeze(1), f

    # torchmil's signature (two inputs), not AttentionPool's: TorchScript rejects a type-ignore comment here
    def forward(
        self,
        T: torch.Tensor,
        M: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_att: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Pool M with attention scored on T.

        Args:
            T: (B, N, in_dim) features the scores come from.
            M: (B, N, D') features that are pooled.
            mask: (B, N) True / 1 = real instance (bool or uint8); None = all real.
            return_att: also return the attention logits f.

        Returns:
            z: (B, D'); with ``return_att`` also f: (B, N), the logits before the masked softmax (as torchmil).
        """
        z, f = self.forward_att(T, M, mask)
        if return_att:  # an if-statement, not an if-expression, so that TorchScript types the union
            return z, f
        return z
