"""torchmil path ``torchmil.datasets.processed_mil_dataset``: re-exports ``milsdk.datasets.processed``."""

from milsdk.datasets.files import default_read_file
from milsdk.datasets.processed import ProcessedMILDataset

__all__ = ["ProcessedMILDataset", "default_read_file"]
