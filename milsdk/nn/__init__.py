"""Building blocks of MIL models. Every block takes X (B, N, D) and an optional mask (B, N), bool or uint8."""

from milsdk.nn.attention import AttentionPool
from milsdk.nn.linear import LazyLinear, get_feat_dim
from milsdk.nn.masked import MaskedSoftmax, as_bool_mask, masked_softmax, normalize_weights
from milsdk.nn.mlp import MLP
from milsdk.nn.pooling import MaxPool, MeanPool
from milsdk.nn.attention import NystromAttention
from milsdk.nn.ppeg import PPEG
from milsdk.nn.smooth_top1_svm import SmoothTop1SVM
from milsdk.nn.transformers import NystromTransformerEncoder, NystromTransformerLayer
from milsdk.nn.attention import MultiheadCrossAttention, MultiheadSelfAttention, memory_efficient_attention
from milsdk.nn.transformers import TransformerEncoder, TransformerLayer
from milsdk.nn.variational_autoencoder import VariationalAutoEncoder, VariationalAutoEncoderMIL

__all__ = [
    "AttentionPool",
    "LazyLinear",
    "MLP",
    "MaskedSoftmax",
    "MaxPool",
    "MeanPool",
    "MultiheadCrossAttention",
    "MultiheadSelfAttention",
    "NystromAttention",
    "NystromTransformerEncoder",
    "NystromTransformerLayer",
    "PPEG",
    "SmoothTop1SVM",
    "TransformerEncoder",
    "TransformerLayer",
    "VariationalAutoEncoder",
    "VariationalAutoEncoderMIL",
    "as_bool_mask",
    "get_feat_dim",
    "masked_softmax",
    "memory_efficient_attention",
    "normalize_weights",
]

from milsdk.nn.attention import iRPEMultiheadSelfAttention  # noqa: E402
from milsdk.nn.positional_encoding import SinusoidalPositionalEncodingND  # noqa: E402
from milsdk.nn.transformers import T2TLayer, iRPETransformerEncoder, iRPETransformerLayer  # noqa: E402

__all__ += [
    "SinusoidalPositionalEncodingND",
    "T2TLayer",
    "iRPEMultiheadSelfAttention",
    "iRPETransformerEncoder",
    "iRPETransformerLayer",
]

from milsdk.nn.attention import NeighbourAttention  # noqa: E402

__all__ += ["NeighbourAttention"]

from milsdk.nn.gnns import ChebConv, DeepGCNLayer, GCNConv, GNNIdentity, dense_mincut_pool  # noqa: E402

__all__ += ["ChebConv", "DeepGCNLayer", "GCNConv", "GNNIdentity", "dense_mincut_pool"]

from milsdk.nn.attention import ProbSmoothAttentionPool  # noqa: E402

__all__ += ["ProbSmoothAttentionPool"]

from milsdk.nn.attention import SmAttentionPool, SmMultiheadSelfAttention  # noqa: E402
from milsdk.nn.sm import ApproxSm, ExactSm, Sm  # noqa: E402
from milsdk.nn.transformers import SmTransformerEncoder, SmTransformerLayer  # noqa: E402

__all__ += [
    "ApproxSm",
    "ExactSm",
    "Sm",
    "SmAttentionPool",
    "SmMultiheadSelfAttention",
    "SmTransformerEncoder",
    "SmTransformerLayer",
]

from milsdk.nn.transformers import Encoder  # noqa: E402

__all__ += ["Encoder"]
