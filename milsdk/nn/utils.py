"""torchmil path ``torchmil.nn.utils``: re-exports several milsdk.nn modules."""

from milsdk.nn.linear import LazyLinear, get_feat_dim
from milsdk.nn.masked import MaskedSoftmax, masked_softmax
from milsdk.nn.positional_encoding import SinusoidalPositionalEncodingND
from milsdk.nn.smooth_top1_svm import SmoothTop1SVM
from milsdk.nn.svm_helpers import delta, detect_large, log_sum_exp

__all__ = [
    "LazyLinear",
    "MaskedSoftmax",
    "SinusoidalPositionalEncodingND",
    "SmoothTop1SVM",
    "delta",
    "detect_large",
    "get_feat_dim",
    "log_sum_exp",
    "masked_softmax",
]
