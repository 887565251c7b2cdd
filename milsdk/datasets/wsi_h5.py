"""Whole-slide images as one .h5 file per slide (CLAM, TRIDENT, STAMP feature extractors).

Each ``<slide>.h5`` holds the patch features (dataset ``features``; STAMP names it ``feats``) and, usually, the
patch positions (dataset ``coords``, level-0 pixels of each patch's corner). Slide labels come from a folder of
per-slide files or from a CSV table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from milsdk.datasets.patch_grid import coords_to_grid
from milsdk.datasets.processed import ProcessedMILDataset
from milsdk.datasets.tables import read_label_table
from milsdk.errors import DatasetError

__all__ = ["TridentWSIDataset", "WSIH5Dataset"]

# Grid units: the 8-neighbourhood (diagonals are sqrt(2) apart).
_DEFAULT_DIST_THR = math.sqrt(2)


class WSIH5Dataset(ProcessedMILDataset):
    """Slides stored as ``features_path/<slide>.h5`` (datasets ``features`` or ``feats``, and ``coords``).

    Coords become integer grid positions starting at 0: ``floor(coords / patch_size - min)``, with
    ``patch_size=None`` inferring the patch stride from the coords themselves (any unit: pixels, micrometres).

    Bag keys: ``X`` (N, D) float32, ``Y`` (), ``y_inst`` (N,) int64, ``adj`` (N, N) sparse float32,
    ``coords`` (N, 2) int64.

    Args:
        features_path: folder of ``<slide>.h5`` feature files (also lists the slides).
        labels_path: a folder of ``<slide>.h5`` files with dataset ``labels``, or a ``.csv`` table with one row
            per slide (columns ``wsi_name_col`` and ``wsi_label_col``; slide extensions such as ``.svs`` are
            stripped from the names). None: no ``Y``.
        inst_labels_path: folder of ``<slide>.h5`` with dataset ``inst_labels`` (or ``patch_labels``).
        coords_path: folder of ``<slide>.h5`` with dataset ``coords``; None reads ``coords`` from the feature files.
        bag_names: the slides to use; None lists ``features_path``.
        bag_keys: keys of each bag; None means every key that can be provided.
        patch_size: the grid step in coords units; None infers it.
        dist_thr: ``adj`` radius in grid units; None means sqrt(2) (8 neighbours).
        adj_with_dist: weight edges by feature distance.
        norm_adj: normalise ``adj``.
        load_at_init: read every slide in the constructor.
        wsi_name_col: slide-name column of a label CSV.
        wsi_label_col: label column of a label CSV (numeric).
        verbose: progress bar when loading at init.
    """

    def __init__(
        self,
        features_path: str | Path,
        labels_path: str | Path | None = None,
        inst_labels_path: str | Path | None = None,
        coords_path: str | Path | None = None,
        bag_names: Iterable[str] | None = None,
        bag_keys: Sequence[str] | None = None,
        patch_size: float | None = None,
        dist_thr: float | None = None,
        adj_with_dist: bool = False,
        norm_adj: bool = True,
        load_at_init: bool = False,
        wsi_name_col: str = "slide_id",
        wsi_label_col: str = "label",
        verbose: bool = True,
    ) -> None:
        self.patch_size = patch_size
        labels = None if labels_path is None else Path(labels_path)
        self.label_csv = labels if labels is not None and labels.suffix.lower() == ".csv" else None
        self.wsi_name_col = wsi_name_col
        self.wsi_label_col = wsi_label_col
        self._label_table = (
            read_label_table(self.label_csv, wsi_name_col, wsi_label_col)
            if self.label_csv is not None
            else None
        )
        super().__init__(
            features_path=features_path,
            labels_path=None if self.label_csv is not None else labels,
            inst_labels_path=inst_labels_path,
            coords_path=coords_path,
            bag_names=bag_names,
            bag_keys=bag_keys,
            file_ext=".h5",
            dist_thr=_DEFAULT_DIST_THR if dist_thr is None else dist_thr,
            adj_with_dist=adj_with_dist,
            norm_adj=norm_adj,
            load_at_init=load_at_init,
            verbose=verbose,
        )

    def _has_source(self, quantity: str) -> bool:
        if quantity == "coords":
            return True  # from coords_path, else from the feature files
        if quantity == "Y" and self._label_table is not None:
            return True
        return super()._has_source(quantity)

    def _file_path(self, quantity: str, name: str) -> Path:
        if quantity == "coords" and self.coords_path is None:
            return super()._file_path("X", name)
        return super()._file_path(quantity, name)

    def _source_name(self, quantity: str, name: str) -> str:
        if quantity == "Y" and self._label_table is not None:
            return f"{self.label_csv} (bag '{name}')"
        return super()._source_name(quantity, name)

    def _check_bags(self) -> None:
        super()._check_bags()
        if self._label_table is not None and "Y" in self._needed:
            missing = [n for n in self.bag_names if n not in self._label_table]
            if missing:
                more = f" ({len(missing) - 1} more slides without a row)" if len(missing) > 1 else ""
                raise DatasetError(
                    f"{self.label_csv}: no row for slide '{missing[0]}' in column '{self.wsi_name_col}'{more}"
                )

    def _load_labels(self, name: str) -> np.ndarray:
        if self._label_table is not None:
            if name not in self._label_table:
                raise DatasetError(
                    f"{self.label_csv}: no row for slide '{name}' in column '{self.wsi_name_col}'"
                )
            return np.asarray(self._label_table[name])
        return super()._load_labels(name)

    def _load_coords(self, name: str) -> np.ndarray:
        return coords_to_grid(super()._load_coords(name), self.patch_size)


class TridentWSIDataset(WSIH5Dataset):
    """The output folder of mahmoodlab TRIDENT (``{mag}x_{ps}px_{ov}px_overlap/``) as a dataset.

    Layout under ``base_path``: ``features_{feature_extractor}/<wsi>.h5`` (dataset ``features``) and
    ``patches/<wsi>_patches.h5`` (dataset ``coords``, level-0 pixels). Coords are divided by ``patch_size``
    (level-0 pixels per patch) and shifted to start at 0.

    Args:
        base_path: the ``{mag}x_{ps}px_{ov}px_overlap/`` folder (a trailing '/' is not needed).
        labels_path: a folder of ``<wsi>.h5`` (dataset ``labels``) or a CSV table (see ``WSIH5Dataset``).
        feature_extractor: names the ``features_{feature_extractor}`` folder, e.g. ``"uni_v1"``.
        patch_labels_path: optional folder of ``<wsi>.h5`` with dataset ``patch_labels``.
        wsi_names: the slides to use; None lists the features folder.
        bag_keys: keys of each bag; None means every key that can be provided.
        patch_size: level-0 pixels per patch (the grid step); None infers it from the coords.
        dist_thr: ``adj`` radius in grid units; None means sqrt(2).
        wsi_name_col: slide-name column of a label CSV; None means ``"slide_id"``.
        wsi_label_col: label column of a label CSV; None means ``"label"``.
    """

    _ARG_NAMES: ClassVar[dict[str, str]] = {**WSIH5Dataset._ARG_NAMES, "y_inst": "patch_labels_path"}

    def __init__(
        self,
        base_path: str | Path,
        labels_path: str | Path,
        feature_extractor: str,
        patch_labels_path: str | Path | None = None,
        wsi_names: Iterable[str] | None = None,
        bag_keys: Sequence[str] | None = None,
        patch_size: float | None = 512,
        dist_thr: float | None = None,
        adj_with_dist: bool = False,
        norm_adj: bool = True,
        load_at_init: bool = True,
        wsi_name_col: str | None = None,
        wsi_label_col: str | None = None,
        verbose: bool = True,
    ) -> None:
        self.base_path = Path(base_path)
        self.feature_extractor = feature_extractor
        super().__init__(
            features_path=self.base_path / f"features_{feature_extractor}",
            labels_path=labels_path,
            inst_labels_path=patch_labels_path,
            coords_path=self.base_path / "patches",
            bag_names=wsi_names,
            bag_keys=bag_keys,
            patch_size=patch_size,
            dist_thr=dist_thr,
            adj_with_dist=adj_with_dist,
            norm_adj=norm_adj,
            load_at_init=load_at_init,
            wsi_name_col=wsi_name_col or "slide_id",
            wsi_label_col=wsi_label_col or "label",
            verbose=verbose,
        )

    def _file_path(self, quantity: str, name: str) -> Path:
        if quantity == "coords":
            return self.coords_path / f"{name}_patches.h5"
        return super()._file_path(quantity, name)
