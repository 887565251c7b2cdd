"""BinaryClassificationDataset: processed bags with a 0/1 bag label and optional 0/1 instance labels."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from milsdk.datasets.processed import ProcessedMILDataset
from milsdk.errors import DatasetError

__all__ = ["BinaryClassificationDataset"]

logger = logging.getLogger(__name__)


class BinaryClassificationDataset(ProcessedMILDataset):
    """Binary MIL bags: ``Y`` is a 0-dim int64 in {0, 1}, ``y_inst`` (N,) int64 in {-1, 0, 1} (-1 = unknown).

    Instance labels are optional: without ``inst_labels_path``, ``y_inst`` is all 0 for a negative bag (every
    instance of a negative bag is negative) and all -1 for a positive one (which instances are positive is not
    known). Instance labels that contradict the bag label (a 1 in a negative bag, or only 0s in a positive bag)
    are replaced by -1, with a warning when ``verbose``.

    Bag keys: ``X`` (N, D) float32, ``Y`` () int64, ``y_inst`` (N,) int64, ``adj`` (N, N) sparse float32,
    ``coords`` (N, d). See ``ProcessedMILDataset`` for the folder layout and the other arguments.

    Args:
        features_path: folder of ``<bag>.npy`` features (N, D).
        labels_path: folder of ``<bag>.npy`` labels, one value 0 or 1.
        inst_labels_path: optional folder of ``<bag>.npy`` instance labels (N,) in {-1, 0, 1}.
        coords_path: optional folder of ``<bag>.npy`` coords (N, d), for ``coords`` and ``adj``.
        file_ext: ``".npy"`` (default) or ``".h5"``.
    """

    def __init__(
        self,
        features_path: str | Path,
        labels_path: str | Path,
        inst_labels_path: str | Path | None = None,
        coords_path: str | Path | None = None,
        bag_names: Iterable[str] | None = None,
        bag_keys: Sequence[str] | None = None,
        dist_thr: float = 1.5,
        adj_with_dist: bool = False,
        norm_adj: bool = True,
        load_at_init: bool = True,
        verbose: bool = True,
        file_ext: str = ".npy",
    ) -> None:
        super().__init__(
            features_path=features_path,
            labels_path=labels_path,
            inst_labels_path=inst_labels_path,
            coords_path=coords_path,
            bag_names=bag_names,
            bag_keys=bag_keys,
            file_ext=file_ext,
            dist_thr=dist_thr,
            adj_with_dist=adj_with_dist,
            norm_adj=norm_adj,
            load_at_init=load_at_init,
            verbose=verbose,
        )

    def _derived_keys(self) -> set[str]:
        return super()._derived_keys() | {"y_inst"}

    def _needed_quantities(self) -> set[str]:
        needed = super()._needed_quantities()
        if "y_inst" in needed:
            # Checking or deriving instance labels needs the bag label, and deriving them needs N.
            needed.add("Y")
            if not self._has_source("y_inst"):
                needed.add("X")
        return needed

    def _convert_label(self, name: str, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y)
        source = self._source_name("Y", name)
        if y.size != 1:
            raise DatasetError(f"{source}: a binary label must be one value, found shape {y.shape}")
        value = y.reshape(()).item()
        if value not in (0, 1):
            raise DatasetError(f"{source}: a binary label must be 0 or 1, found {value!r}")
        return np.asarray(int(value), dtype=np.int64)

    def _convert_inst_labels(self, name: str, y_inst: np.ndarray) -> np.ndarray:
        y_inst = super()._convert_inst_labels(name, y_inst)
        bad = ~np.isin(y_inst, (-1, 0, 1))
        if y_inst.ndim != 1 or np.any(bad):
            found = y_inst[bad][:3].tolist() if y_inst.ndim == 1 else f"shape {y_inst.shape}"
            raise DatasetError(
                f"{self._source_name('y_inst', name)}: instance labels must be (N,) in {{-1, 0, 1}}, found {found}"
            )
        return y_inst.astype(np.int64)

    def _load_bag(self, name: str) -> dict[str, np.ndarray]:
        bag = super()._load_bag(name)
        if "y_inst" not in self._needed:
            return bag
        Y = int(bag["Y"])
        if "y_inst" not in bag:
            n = bag["X"].shape[0]
            bag["y_inst"] = np.full(n, 0 if Y == 0 else -1, dtype=np.int64)
            return bag
        y_inst = bag["y_inst"]
        contradicts = bool(np.any(y_inst == 1)) if Y == 0 else bool(np.all(y_inst == 0))
        if contradicts:
            if self.verbose:
                logger.warning(
                    "%s: instance labels contradict bag label %d; setting them to -1 (unknown)",
                    self._source_name("y_inst", name),
                    Y,
                )
            bag["y_inst"] = np.full_like(y_inst, -1)
        return bag
