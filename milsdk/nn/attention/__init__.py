"""Attention blocks."""

from milsdk.nn.attention.attention_pool import AttentionPool

__all__ = ["AttentionPool"]

from milsdk.nn.attention.nystrom_attention import (  # noqa: E402
    NystromAttention,
    moore_penrose_iter_pinv,
    nystrom_attention_rows,
)

__all__ += ["NystromAttention", "moore_penrose_iter_pinv", "nystrom_attention_rows"]

from milsdk.nn.attention.memory_efficient_attention import memory_efficient_attention
from milsdk.nn.attention.multihead_cross_attention import MultiheadCrossAttention
from milsdk.nn.attention.multihead_self_attention import MultiheadSelfAttention

__all__ += ["MultiheadCrossAttention", "MultiheadSelfAttention", "memory_efficient_attention"]

from milsdk.nn.attention.irpe_multihead_self_attention import iRPEMultiheadSelfAttention  # noqa: E402

__all__ += ["iRPEMultiheadSelfAttention"]

from milsdk.nn.attention.neighbour_attention import NeighbourAttention  # noqa: E402

__all__ += ["NeighbourAttention"]

from milsdk.nn.attention.prob_smooth_attention_pool import ProbSmoothAttentionPool  # noqa: E402

__all__ += ["ProbSmoothAttentionPool"]

from milsdk.nn.attention.sm_attention_pool import SmAttentionPool  # noqa: E402
from milsdk.nn.attention.sm_multihead_self_attention import SmMultiheadSelfAttention  # noqa: E402

__all__ += ["SmAttentionPool", "SmMultiheadSelfAttention"]

from milsdk.nn.attention.camil_attention_pool import CAMILAttentionPool  # noqa: E402
from milsdk.nn.attention.camil_self_attention import CAMILSelfAttention  # noqa: E402

__all__ += ["CAMILAttentionPool", "CAMILSelfAttention"]
