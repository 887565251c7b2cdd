"""Attention blocks."""

from milsdk.nn.attention.attention_pool import AttentionPool

__all__ = ["AttentionPool"]

from milsdk.nn.attention.nystrom_attention import (  # noqa: E402
    NystromAttention,
    moore_penrose_iter_pinv,
    nystrom_attention_rows,
)

__all__ += ["NystromAttention", "moore_penrose_iter_pinv", "nystrom_attention_rows"]
