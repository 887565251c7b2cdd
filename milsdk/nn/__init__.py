"""Building blocks of MIL models. Every block takes X (B, N, D) and an optional mask (B, N), bool or uint8."""

from milsdk.nn.attention import AttentionPool
from milsdk.nn.linear import LazyLinear, get_feat_dim
from milsdk.nn.masked import MaskedSoftmax, as_bool_mask, masked_softmax, normalize_weights
from milsdk.nn.mlp import MLP
from milsdk.nn.pooling import MaxPool, MeanPool
from milsdk.nn.attention import NystromAttention
from milsdk.nn.ppeg import PPEG
from milsdk.nn.transformers import NystromTransformerEncoder, NystromTransformerLayer

__all__ = [
    "AttentionPool",
    "LazyLinear",
    "MLP",
    "MaskedSoftmax",
    "MaxPool",
    "MeanPool",
    "NystromAttention",
    "NystromTransformerEncoder",
    "NystromTransformerLayer",
    "PPEG",
    "as_bool_mask",
    "get_feat_dim",
    "masked_softmax",
    "normalize_weights",
]
