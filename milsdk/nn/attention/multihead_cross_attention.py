"""Multi-head cross-attention (Vaswani et al., NeurIPS 2017): queries from one sequence, keys and values from a
masked bag, linear in memory in the bag size."""

from __future__ import annotations

import torch

from milsdk.nn.attention.memory_efficient_attention import memory_efficient_attention
from milsdk.nn.attention.multihead_self_attention import masked_attention_weights
from milsdk.nn.masked import as_bool_mask

__all__ = ["MultiheadCrossAttention"]


class MultiheadCrossAttention(torch.nn.Module):
    r"""Multi-head scaled dot-product attention of queries X over the real tokens of a bag Y.

    .. math::
        Q = X W_Q,\quad K = Y W_K,\quad V = Y W_V,\qquad
        Z = \operatorname{softmax}_{j \in \text{real}(Y)}\!\Big(\frac{Q_h K_h^\top}{\sqrt{d}}\Big) V_h
        \text{ per head } h, \text{ heads concatenated, then } W_O

    (:math:`d` = att_dim / n_heads; :math:`W_O` only when ``out_dim != att_dim``). The mask is over the
    keys (Y's tokens): padded tokens of Y never receive weight, and a bag without any real token gives 0.
    The reference builds its mask from the query length instead; here it is the bag's (B, Nk) mask, which is
    what padding needs. Without ``return_att`` it runs :func:`memory_efficient_attention` (linear in Nk);
    with it the (B, H, Nq, Nk) weights are formed, which is O(Nk) for a few queries (e.g. a class token).

    Args:
        in_dim: token size D of X and Y.
        out_dim: output size (default ``in_dim``).
        att_dim: total query/key/value size over the heads (forced to ``in_dim`` when ``learn_weights=False``).
        n_heads: number of heads; must divide ``att_dim``.
        dropout: dropout on the attention weights (training only).
        learn_weights: learn the bias-free projections; if False, q = X and k = v = Y.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int | None = None,
        att_dim: int = 512,
        n_heads: int = 4,
        dropout: float = 0.0,
        learn_weights: bool = True,
    ) -> None:
        super().__init__()
        out_dim = in_dim if out_dim is None else out_dim
        if not learn_weights:
            att_dim = in_dim
        if n_heads < 1 or att_dim % n_heads != 0:
            raise ValueError(f"MultiheadCrossAttention: n_heads={n_heads} must divide att_dim={att_dim}")
        self.in_dim, self.out_dim, self.att_dim = in_dim, out_dim, att_dim
        self.n_heads, self.head_dim = n_heads, att_dim // n_heads
        self.dropout, self.learn_weights = float(dropout), learn_weights
        self.q_nn = torch.nn.Linear(in_dim, att_dim, bias=False) if learn_weights else None
        self.kv_nn = torch.nn.Linear(in_dim, 2 * att_dim, bias=False) if learn_weights else None
        self.out_proj: torch.nn.Module = (
            torch.nn.Linear(att_dim, out_dim) if out_dim != att_dim else torch.nn.Identity()
        )

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, L, H*d) -> (B, H, L, d)."""
        return t.reshape(t.shape[0], t.shape[1], self.n_heads, self.head_dim).transpose(1, 2)

    def attend(
        self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` with one fixed return type (what TorchScript callers use).

        Returns:
            z: (B, Nq, out_dim); weights (B, H, Nq, Nk), or an empty tensor when not ``need_weights``.
        """
        keep = as_bool_mask(mask, y)
        if self.q_nn is not None and self.kv_nn is not None:
            q = self.q_nn(x)
            k, v = self.kv_nn(y).chunk(2, dim=-1)
        else:
            q, k, v = x, y, y
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        p = self.dropout if self.training else 0.0
        if need_weights:
            weights = masked_attention_weights(q, k, keep)
            out = (
                torch.nn.functional.dropout(weights, p=p, training=self.training) @ v.to(weights.dtype)
            ).to(x.dtype)
        else:
            weights = x.new_zeros(0)
            out = memory_efficient_attention(q, k, v, keep, dropout_p=p)
        z = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.att_dim)
        return self.out_proj(z), weights

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, return_att: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Attend from the queries x over the real tokens of y.

        Args:
            x: (B, Nq, in_dim) queries.
            y: (B, Nk, in_dim) keys / values (a bag, possibly padded).
            mask: (B, Nk) True / 1 = real token of y (bool or uint8); None = all real.
            return_att: also return the attention weights (B, H, Nq, Nk).

        Returns:
            z: (B, Nq, out_dim); with ``return_att`` also the weights, rows summing to 1 over the real keys,
            0 on masked keys (all 0 for a bag with no real token).
        """
        z, att = self.attend(x, y, mask, return_att)
        if return_att:
            return z, att
        return z

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, out_dim={self.out_dim}, att_dim={self.att_dim}, n_heads={self.n_heads}, "
            f"dropout={self.dropout}, learn_weights={self.learn_weights}"
        )
