"""torchmil path ``torchmil.datasets.rsnamil_dataset``: re-exports ``milsdk.datasets.rsna``."""

from milsdk.datasets.rsna import RSNAMILDataset

__all__ = ["RSNAMILDataset"]
