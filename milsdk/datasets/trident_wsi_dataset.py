"""torchmil path ``torchmil.datasets.trident_wsi_dataset``: re-exports ``milsdk.datasets.wsi_h5``."""

from milsdk.datasets.wsi_h5 import TridentWSIDataset

__all__ = ["TridentWSIDataset"]
