"""torchmil path ``torchmil.datasets.camelyon16mil_dataset``: re-exports ``milsdk.datasets.camelyon16``."""

from milsdk.datasets.camelyon16 import CAMELYON16MILDataset

__all__ = ["CAMELYON16MILDataset"]
