"""torchmil path ``torchmil.nn.max_pool``: re-exports ``milsdk.nn.pooling``."""

from milsdk.nn.pooling import MaxPool

__all__ = ["MaxPool"]
