"""torchmil path ``torchmil.datasets.shifted_mean_mil_dataset``: re-exports ``milsdk.datasets.synthetic``."""

from milsdk.datasets.synthetic import ShiftedMeanMILDataset, normal_pdf

__all__ = ["ShiftedMeanMILDataset", "normal_pdf"]
