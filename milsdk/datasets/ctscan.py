"""CTScanDataset: a CT scan is a bag of slice features; slices are ordered, so position = slice index."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from milsdk.datasets.processed import ProcessedMILDataset

__all__ = ["CTScanDataset"]

# Slice indices are 1 apart: a radius just above 1 links each slice to the previous and next one (a chain).
CT_DIST_THR = 1.10


class CTScanDataset(ProcessedMILDataset):
    """CT scans as bags of slices, read from ``.npy`` folders; coords are the slice indices and ``adj`` a chain.

    Folders: ``features_path/<scan>.npy`` (N, D), ``labels_path/<scan>.npy``, optional
    ``slice_labels_path/<scan>.npy`` (N,). There are no coordinate files: ``coords`` is ``arange(N)`` as (N, 1)
    int64, and ``adj`` links slices i and i + 1 (normalised by default).

    Bag keys: ``X`` (N, D) float32, ``Y`` (), ``y_inst`` (N,) int64 (only with ``slice_labels_path``),
    ``adj`` (N, N) sparse float32, ``coords`` (N, 1) int64.

    Args:
        features_path: folder of slice features.
        labels_path: folder of scan labels.
        slice_labels_path: optional folder of slice labels.
        ctscan_names: the scans to use; None lists ``features_path``.
        bag_keys: keys of each bag; None means all that can be provided.
        adj_with_dist: weight edges by feature distance.
        norm_adj: normalise ``adj``.
        load_at_init: read every scan in the constructor.
        verbose: progress bar when loading at init.
    """

    _ARG_NAMES: ClassVar[dict[str, str]] = {**ProcessedMILDataset._ARG_NAMES, "y_inst": "slice_labels_path"}

    def __init__(
        self,
        features_path: str | Path,
        labels_path: str | Path,
        slice_labels_path: str | Path | None = None,
        ctscan_names: Iterable[str] | None = None,
        bag_keys: Sequence[str] | None = None,
        adj_with_dist: bool = False,
        norm_adj: bool = True,
        load_at_init: bool = True,
        verbose: bool = True,
    ) -> None:
        super().__init__(
            features_path=features_path,
            labels_path=labels_path,
            inst_labels_path=slice_labels_path,
            coords_path=None,
            bag_names=ctscan_names,
            bag_keys=bag_keys,
            file_ext=".npy",
            dist_thr=CT_DIST_THR,
            adj_with_dist=adj_with_dist,
            norm_adj=norm_adj,
            load_at_init=load_at_init,
            verbose=verbose,
        )

    def _derived_keys(self) -> set[str]:
        return super()._derived_keys() | {"coords"}

    def _needed_quantities(self) -> set[str]:
        needed = super()._needed_quantities()
        if "coords" in needed:
            needed.add("X")  # slice indices need the number of slices
        return needed

    def _load_bag(self, name: str) -> dict[str, np.ndarray]:
        bag = super()._load_bag(name)
        if "coords" in self._needed:
            bag["coords"] = np.arange(bag["X"].shape[0], dtype=np.int64).reshape(-1, 1)
        return bag
