"""CAMELYON16: lymph-node WSIs, positive when the slide holds metastasis (binary)."""

from __future__ import annotations

from milsdk.datasets.wsi_benchmark import WSIBenchmarkDataset

__all__ = ["CAMELYON16MILDataset"]


class CAMELYON16MILDataset(WSIBenchmarkDataset):
    """CAMELYON16 slides as bags of patch features (layout and arguments: ``WSIBenchmarkDataset``).

    A patch is labelled positive when more than half of it lies in an annotated metastasis, a slide when any
    patch is. Feature sets distributed with the benchmark: ``"UNI"``, ``"resnet50_bt"``.

    Example:
        >>> ds = CAMELYON16MILDataset("data/CAMELYON16", features="UNI", partition="train")  # doctest: +SKIP
        >>> ds[0]["X"].shape  # (N, 1024)  # doctest: +SKIP
    """
