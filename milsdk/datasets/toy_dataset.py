"""torchmil path ``torchmil.datasets.toy_dataset``: re-exports ``milsdk.datasets.synthetic``."""

from milsdk.datasets.synthetic import ToyDataset

__all__ = ["ToyDataset"]
