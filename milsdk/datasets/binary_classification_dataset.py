"""torchmil path ``torchmil.datasets.binary_classification_dataset``: re-exports ``milsdk.datasets.binary``."""

from milsdk.datasets.binary import BinaryClassificationDataset

__all__ = ["BinaryClassificationDataset"]
