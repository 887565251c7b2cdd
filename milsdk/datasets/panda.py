"""PANDA: prostate biopsy WSIs, positive when the biopsy holds cancer (binary)."""

from __future__ import annotations

from milsdk.datasets.wsi_benchmark import WSIBenchmarkDataset

__all__ = ["PANDAMILDataset"]


class PANDAMILDataset(WSIBenchmarkDataset):
    """PANDA biopsies as bags of patch features (layout and arguments: ``WSIBenchmarkDataset``).

    A patch is labelled positive when more than half of its pixels are cancerous, a biopsy when any patch is.
    Feature sets distributed with the benchmark: ``"UNI"``, ``"resnet50_bt"``.
    """
