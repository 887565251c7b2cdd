"""MIL datasets: file-backed bags (.npy / .h5 folders, WSI benchmarks, CT scans, CLAM/TRIDENT .h5), synthetic
unit-test datasets and the digits demo. Every ``dataset[i]`` is a ``TensorDict`` (``batch_size=[]``) with keys
among ``X`` (N, D) float32, ``Y``, ``y_inst`` (N,) int64, ``adj`` (N, N) sparse float32, ``coords`` (N, d).
"""

from milsdk.datasets.binary import BinaryClassificationDataset
from milsdk.datasets.camelyon16 import CAMELYON16MILDataset
from milsdk.datasets.ctscan import CTScanDataset
from milsdk.datasets.digits import DigitsMILDataset
from milsdk.datasets.files import default_read_file
from milsdk.datasets.panda import PANDAMILDataset
from milsdk.datasets.patch_grid import coords_to_grid
from milsdk.datasets.processed import DEFAULT_BAG_KEYS, ProcessedMILDataset
from milsdk.datasets.rsna import RSNAMILDataset
from milsdk.datasets.synthetic import (
    FalseFrequencyMILDataset,
    MCStandardMILDataset,
    SCStandardMILDataset,
    ShiftedMeanMILDataset,
    ToyDataset,
)
from milsdk.datasets.wsi_benchmark import WSIBenchmarkDataset
from milsdk.datasets.wsi_h5 import TridentWSIDataset, WSIH5Dataset

__all__ = [
    "DEFAULT_BAG_KEYS",
    "BinaryClassificationDataset",
    "CAMELYON16MILDataset",
    "CTScanDataset",
    "DigitsMILDataset",
    "FalseFrequencyMILDataset",
    "MCStandardMILDataset",
    "PANDAMILDataset",
    "ProcessedMILDataset",
    "RSNAMILDataset",
    "SCStandardMILDataset",
    "ShiftedMeanMILDataset",
    "ToyDataset",
    "TridentWSIDataset",
    "WSIBenchmarkDataset",
    "WSIH5Dataset",
    "coords_to_grid",
    "default_read_file",
]

from milsdk.datasets.video import TADMILDataset, VideoClassificationDataset  # noqa: E402

__all__ += ["TADMILDataset", "VideoClassificationDataset"]
