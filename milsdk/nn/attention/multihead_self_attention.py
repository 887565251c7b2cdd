"""Multi-head self-attention (Vaswani et al., NeurIPS 2017, "Attention Is All You Need"), masked per bag and
linear in memory in the bag size."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from milsdk.nn.attention.memory_efficient_attention import memory_efficient_attention
from milsdk.nn.linear import linear_in_weight_dtype
from milsdk.nn.masked import as_bool_mask

__all__ = ["MultiheadSelfAttention", "masked_attention_weights"]


def masked_attention_weights(
    q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor, query_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Explicit attention weights softmax(q k^T / sqrt(d)) over the real keys (the full Nq x Nk matrix).

    Masked keys get weight 0 (finite float32 minimum, never -inf), rows of masked queries and of bags without
    any real key are 0: never NaN.

    Args:
        q: (B, H, Nq, d); k: (B, H, Nk, d).
        key_mask: (B, Nk) bool, True = real key.
        query_mask: (B, Nq) bool, True = real query; None = all real.

    Returns:
        (B, H, Nq, Nk) float32 at least.
    """
    work_dtype = torch.promote_types(q.dtype, torch.float32)
    scores = (q.to(work_dtype) * (float(q.shape[-1]) ** -0.5)) @ k.to(work_dtype).transpose(-1, -2)
    weights = torch.softmax(scores.masked_fill(~key_mask[:, None, None, :], -3.4028234663852886e38), dim=-1)
    rows = key_mask.any(dim=1)[:, None, None, None]
    if query_mask is not None:
        rows = rows & query_mask[:, None, :, None]
    return weights * rows.to(work_dtype)


class MultiheadSelfAttention(torch.nn.Module):
    r"""Multi-head scaled dot-product self-attention over the real tokens of each bag.

    .. math::
        Q = X W_Q,\quad K = X W_K,\quad V = X W_V,\qquad
        Y = \operatorname{softmax}_{j \in \text{real}}\!\Big(\frac{Q_h K_h^\top}{\sqrt{d}}\Big) V_h
        \text{ per head } h, \text{ heads concatenated, then } W_O

    (:math:`d` = att_dim / n_heads; :math:`W_O` only when ``out_dim != att_dim``, as in the reference). Padded
    keys never receive weight, so real outputs do not depend on padding; outputs at padded positions are finite
    and meaningless. The normal path (``return_att=False``) is :func:`memory_efficient_attention`: memory linear
    in N in eager, TorchScript and exported ONNX. ``return_att=True`` forms the (B, H, N, N) weights, with 0 for
    masked keys and for padded query rows (the reference returns NaN there, defect 8.2).

    Args:
        in_dim: token size D.
        out_dim: output size (default ``in_dim``).
        att_dim: total query/key/value size over the heads (forced to ``in_dim`` when ``learn_weights=False``).
        n_heads: number of heads; must divide ``att_dim``.
        dropout: dropout on the attention weights (training only).
        learn_weights: learn the bias-free q/k/v projection; if False, q = k = v = X.
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
            raise ValueError(f"MultiheadSelfAttention: n_heads={n_heads} must divide att_dim={att_dim}")
        self.in_dim, self.out_dim, self.att_dim = in_dim, out_dim, att_dim
        self.n_heads, self.head_dim = n_heads, att_dim // n_heads
        self.dropout, self.learn_weights = float(dropout), learn_weights
        self.qkv_nn = torch.nn.Linear(in_dim, 3 * att_dim, bias=False) if learn_weights else None
        self.out_proj: torch.nn.Module = (
            torch.nn.Linear(att_dim, out_dim) if out_dim != att_dim else torch.nn.Identity()
        )

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, L, H*d) -> (B, H, L, d)."""
        return t.reshape(t.shape[0], t.shape[1], self.n_heads, self.head_dim).transpose(1, 2)

    def attend(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
        n_queries: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Self-attention outputs of the first ``n_queries`` tokens (all when -1) over all tokens of the bag.

        With ``n_queries=1`` this is the output of a leading class token alone, in O(N) time and memory
        instead of O(N^2) time.

        Args:
            x: (B, N, in_dim) tokens (keys and values; the first ``n_queries`` are also the queries).
            mask: (B, N) True / 1 = real token; None = all real.
            need_weights: also return the (B, H, Nq, N) attention weights.
            n_queries: number of leading tokens whose outputs are computed; -1 = all (Nq = N).

        Returns:
            y: (B, Nq, out_dim); weights (B, H, Nq, N) (0 on masked keys and padded query rows), or an empty
            tensor when not ``need_weights``.
        """
        keep = as_bool_mask(mask, x)
        x_q = x if n_queries < 0 else x[:, :n_queries]
        if self.qkv_nn is not None:
            if n_queries < 0:
                q, k, v = self.qkv_nn(x).chunk(3, dim=-1)
            else:
                w = self.qkv_nn.weight
                q = linear_in_weight_dtype(x_q, w[: self.att_dim])
                k, v = linear_in_weight_dtype(x, w[self.att_dim :]).chunk(2, dim=-1)
        else:
            q, k, v = x_q, x, x
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        p = self.dropout if self.training else 0.0
        if need_weights:
            weights = masked_attention_weights(q, k, keep)
            out = (F.dropout(weights, p=p, training=self.training) @ v.to(weights.dtype)).to(x.dtype)
            # padded queries attend like real ones (same outputs as the memory-efficient path); their rows of
            # the returned map are 0
            query_mask = keep if n_queries < 0 else keep[:, :n_queries]
            weights = weights * query_mask[:, None, :, None].to(weights.dtype)
        else:
            weights = x.new_zeros(0)
            out = memory_efficient_attention(q, k, v, keep, dropout_p=p)
        y = out.transpose(1, 2).reshape(x_q.shape[0], x_q.shape[1], self.att_dim)
        return self.out_proj(y), weights

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, return_att: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Self-attention over each bag's real tokens.

        Args:
            x: (B, N, in_dim) tokens.
            mask: (B, N) True / 1 = real token (bool or uint8); None = all real.
            return_att: also return the attention weights (forms the N x N matrix).

        Returns:
            y: (B, N, out_dim); with ``return_att`` also att (B, H, N, N), rows summing to 1 over the real keys
            for real queries, 0 on masked keys and padded query rows.
        """
        y, att = self.attend(x, mask, return_att)
        if return_att:
            return y, att
        return y

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, out_dim={self.out_dim}, att_dim={self.att_dim}, n_heads={self.n_heads}, "
            f"dropout={self.dropout}, learn_weights={self.learn_weights}"
        )
