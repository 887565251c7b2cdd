"""Attention-based MIL pooling (Ilse et al., 2018, "Attention-based Deep Multiple Instance Learning")."""

from __future__ import annotations

import torch

from milsdk.nn.linear import LazyLinear
from milsdk.nn.masked import masked_softmax
from milsdk.nn.mlp import make_activation

__all__ = ["AttentionPool"]


class AttentionPool(torch.nn.Module):
    r"""Attention pooling.

    .. math::
        f_i = w^\top \big(\operatorname{act}(V x_i) \odot \sigma(U x_i)\big), \qquad
        s = \operatorname{softmax}_{i \in \text{real}}(f), \qquad z = \sum_i s_i x_i

    (the gate :math:`\sigma(U x_i)` only when ``gated``).

    Args:
        in_dim: instance size D (None = inferred at the first call).
        att_dim: hidden size of the attention MLP.
        act: 'tanh', 'relu' or 'gelu'.
        gated: multiply by a sigmoid gate (gated attention).
    """

    def __init__(self, in_dim: int | None = None, att_dim: int = 128, act: str = "tanh", gated: bool = False) -> None:
        super().__init__()
        if act not in ("tanh", "relu", "gelu"):
            raise ValueError(f"AttentionPool: act must be 'tanh', 'relu' or 'gelu', got {act!r}")
        self.in_dim, self.att_dim, self.act_name, self.gated = in_dim, att_dim, act, gated
        self.fc1 = LazyLinear(in_dim, att_dim)
        self.act = make_activation(act)
        self.fc_gated = LazyLinear(in_dim, att_dim) if gated else None
        self.fc2 = torch.nn.Linear(att_dim, 1, bias=False)

    def attention_logits(self, X: torch.Tensor) -> torch.Tensor:
        """X: (B, N, D) -> f (B, N), the unnormalised attention scores."""
        H = self.act(self.fc1(X))
        if self.fc_gated is not None:
            H = H * torch.sigmoid(self.fc_gated(X))
        return self.fc2(H).squeeze(-1)

    def forward(
        self, X: torch.Tensor, mask: torch.Tensor | None = None, return_att: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Pool instances into one vector per bag.

        Args:
            X: (B, N, D) instance features.
            mask: (B, N) True / 1 = real instance; None = all real.
            return_att: also return the attention logits f.

        Returns:
            z: (B, D); with ``return_att`` also f: (B, N) logits before the softmax (as in the reference).
        """
        z, f = self.pool_with_logits(X, mask)
        if return_att:  # an if-statement, not an if-expression, so that TorchScript types the union
            return z, f
        return z

    def pool_with_logits(self, X: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The same computation with one fixed return type (for callers compiled by TorchScript).

        Args:
            X: (B, N, D); mask: (B, N).

        Returns:
            z: (B, D) pooled vector; f: (B, N) attention logits.
        """
        f = self.attention_logits(X)
        s = masked_softmax(f, mask)
        return torch.bmm(s.unsqueeze(1), X).squeeze(1), f

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, att_dim={self.att_dim}, act={self.act_name!r}, gated={self.gated}"
