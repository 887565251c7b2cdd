"""torchmil path ``torchmil.datasets.video_classification_dataset``: re-exports ``milsdk.datasets.video``."""

from milsdk.datasets.video import VideoClassificationDataset

__all__ = ["VideoClassificationDataset"]
