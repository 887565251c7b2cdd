"""torchmil path ``torchmil.datasets.false_frequency_dataset``: re-exports ``milsdk.datasets.synthetic``."""

from milsdk.datasets.synthetic import FalseFrequencyMILDataset

__all__ = ["FalseFrequencyMILDataset"]
