"""torchmil path ``torchmil.datasets.mc_standard_dataset``: re-exports ``milsdk.datasets.synthetic``."""

from milsdk.datasets.synthetic import MCStandardMILDataset

__all__ = ["MCStandardMILDataset"]
