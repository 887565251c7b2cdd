"""torchmil path ``torchmil.datasets.tadmil_dataset``: re-exports ``milsdk.datasets.video``."""

from milsdk.datasets.video import TADMILDataset

__all__ = ["TADMILDataset"]
