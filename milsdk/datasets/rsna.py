"""RSNA intracranial haemorrhage: head CT scans as bags of slice features (binary)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from milsdk.datasets.binary import BinaryClassificationDataset
from milsdk.datasets.ctscan import CTScanDataset
from milsdk.datasets.tables import split_bag_names

__all__ = ["RSNAMILDataset"]


class RSNAMILDataset(BinaryClassificationDataset, CTScanDataset):
    """RSNA scans: binary labels (``BinaryClassificationDataset``) on CT bags (``CTScanDataset``).

    Layout::

        root/splits.csv                                columns bag_name, split ("train" / "test")
        root/features/features_{features}/<scan>.npy   (N, D) slice features
        root/labels/<scan>.npy                         one value, 0 or 1
        root/slice_labels/<scan>.npy                   (N,) 0/1 (optional)

    Bag keys: ``X`` (N, D) float32, ``Y`` () int64, ``y_inst`` (N,) int64, ``adj`` (N, N) sparse float32 (a
    normalised chain of neighbouring slices), ``coords`` (N, 1) int64 slice indices.

    Args:
        root: the dataset folder.
        features: feature extractor name: ``"resnet18"``, ``"resnet50"`` or ``"vit_b_32"``.
        partition: the ``split`` value to keep, ``"train"`` or ``"test"``.
        bag_keys: keys of each bag; None means all five.
        adj_with_dist: weight edges by feature distance.
        norm_adj: normalise ``adj``.
        load_at_init: read every scan in the constructor.
        verbose: progress bar and label warnings.
    """

    def __init__(
        self,
        root: str | Path,
        features: str = "resnet50",
        partition: str = "train",
        bag_keys: Sequence[str] | None = None,
        adj_with_dist: bool = False,
        norm_adj: bool = True,
        load_at_init: bool = True,
        verbose: bool = False,
    ) -> None:
        self.root = Path(root)
        self.features = features
        self.partition = partition
        features_dir = self.root / "features" / f"features_{features}"
        slice_labels = self.root / "slice_labels"
        # The CT constructor sets the chain geometry; the binary label rules come in through the hooks (MRO).
        CTScanDataset.__init__(
            self,
            features_path=features_dir,
            labels_path=self.root / "labels",
            slice_labels_path=slice_labels if slice_labels.is_dir() else None,
            ctscan_names=split_bag_names(self.root / "splits.csv", partition, features_dir),
            bag_keys=bag_keys,
            adj_with_dist=adj_with_dist,
            norm_adj=norm_adj,
            load_at_init=load_at_init,
            verbose=verbose,
        )
