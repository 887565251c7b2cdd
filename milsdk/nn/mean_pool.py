"""torchmil path ``torchmil.nn.mean_pool``: re-exports ``milsdk.nn.pooling``."""

from milsdk.nn.pooling import MeanPool

__all__ = ["MeanPool"]
