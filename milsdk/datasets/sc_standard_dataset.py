"""torchmil path ``torchmil.datasets.sc_standard_dataset``: re-exports ``milsdk.datasets.synthetic``."""

from milsdk.datasets.synthetic import SCStandardMILDataset

__all__ = ["SCStandardMILDataset"]
