"""torchmil path ``torchmil.datasets.pandamil_dataset``: re-exports ``milsdk.datasets.panda``."""

from milsdk.datasets.panda import PANDAMILDataset

__all__ = ["PANDAMILDataset"]
