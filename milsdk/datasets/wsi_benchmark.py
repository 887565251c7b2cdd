"""The layout shared by the binary WSI benchmarks (CAMELYON16, PANDA): patch features per slide under ``root``.

::

    root/splits.csv                                   columns bag_name, split ("train" / "test")
    root/patches_{patch_size}/features/features_{features}/<slide>.npy    (N, D)
    root/patches_{patch_size}/labels/<slide>.npy                          one value, 0 or 1
    root/patches_{patch_size}/patch_labels/<slide>.npy                    (N,) 0/1 (optional)
    root/patches_{patch_size}/coords/<slide>.npy                          (N, 2) pixel positions
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from milsdk.datasets.binary import BinaryClassificationDataset
from milsdk.datasets.patch_grid import coords_to_grid
from milsdk.datasets.tables import split_bag_names

__all__ = ["WSIBenchmarkDataset"]


class WSIBenchmarkDataset(BinaryClassificationDataset):
    """A binary WSI benchmark in the ``root/patches_{ps}/...`` layout, one partition of ``root/splits.csv``.

    Slides listed in ``splits.csv`` without a features file are skipped (with a warning). Without a
    ``patch_labels`` folder, ``y_inst`` is derived from the slide label (see ``BinaryClassificationDataset``).
    Pixel coords become grid positions ``floor(coords / patch_size - min)`` starting at 0, and ``adj`` links the
    8 neighbours of each patch (``dist_thr`` 1.5).

    Bag keys: ``X`` (N, D) float32, ``Y`` () int64, ``y_inst`` (N,) int64, ``adj`` (N, N) sparse float32,
    ``coords`` (N, 2) int64.

    Args:
        root: the dataset folder.
        features: feature extractor name, the suffix of ``features_{features}``.
        partition: the ``split`` value to keep, ``"train"`` or ``"test"``.
        bag_keys: keys of each bag; None means all five.
        patch_size: patch side in pixels (names the ``patches_{patch_size}`` folder and scales coords).
        adj_with_dist: weight edges by feature distance.
        norm_adj: normalise ``adj``.
        load_at_init: read every slide in the constructor.
        verbose: progress bar and label warnings.
    """

    def __init__(
        self,
        root: str | Path,
        features: str = "UNI",
        partition: str = "train",
        bag_keys: Sequence[str] | None = None,
        patch_size: int = 512,
        adj_with_dist: bool = False,
        norm_adj: bool = True,
        load_at_init: bool = True,
        verbose: bool = False,
    ) -> None:
        self.root = Path(root)
        self.features = features
        self.partition = partition
        self.patch_size = patch_size
        base = self.root / f"patches_{patch_size}"
        features_dir = base / "features" / f"features_{features}"
        patch_labels = base / "patch_labels"
        super().__init__(
            features_path=features_dir,
            labels_path=base / "labels",
            inst_labels_path=patch_labels if patch_labels.is_dir() else None,
            coords_path=base / "coords",
            bag_names=split_bag_names(self.root / "splits.csv", partition, features_dir),
            bag_keys=bag_keys,
            dist_thr=1.5,
            adj_with_dist=adj_with_dist,
            norm_adj=norm_adj,
            load_at_init=load_at_init,
            verbose=verbose,
        )

    def _load_coords(self, name: str) -> np.ndarray:
        return coords_to_grid(super()._load_coords(name), self.patch_size)
