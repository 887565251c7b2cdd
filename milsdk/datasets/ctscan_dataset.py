"""torchmil path ``torchmil.datasets.ctscan_dataset``: re-exports ``milsdk.datasets.ctscan``."""

from milsdk.datasets.ctscan import CTScanDataset

__all__ = ["CTScanDataset"]
