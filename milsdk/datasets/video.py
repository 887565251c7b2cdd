"""Videos as bags of frame features: ``VideoClassificationDataset`` (folders) and the Traffic Anomaly Detection
benchmark ``TADMILDataset``. Frames are ordered like CT slices, so both share ``CTScanDataset``'s geometry:
``coords`` is the frame index and ``adj`` links consecutive frames."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import ClassVar

from milsdk.datasets.binary import BinaryClassificationDataset
from milsdk.datasets.ctscan import CTScanDataset
from milsdk.datasets.tables import split_bag_names

__all__ = ["TADMILDataset", "VideoClassificationDataset"]


class VideoClassificationDataset(CTScanDataset):
    """Videos as bags of frames, read from ``.npy`` folders; coords are the frame indices and ``adj`` a chain.

    Folders: ``features_path/<video>.npy`` (N, D), ``labels_path/<video>.npy``, optional
    ``frame_labels_path/<video>.npy`` (N,).

    Bag keys: ``X`` (N, D) float32, ``Y`` (), ``y_inst`` (N,) int64 (only with frame labels), ``adj`` (N, N)
    sparse float32 linking frames i and i + 1 (weighted by feature distance with ``adj_with_dist``), ``coords``
    (N, 1) int64.

    Args:
        features_path: folder of frame features.
        labels_path: folder of video labels.
        frame_labels_path: optional folder of frame labels.
        video_names: the videos to use; None lists ``features_path``.
        bag_keys: keys of each bag; None means all that can be provided.
        adj_with_dist: weight edges by feature distance.
        norm_adj: normalise ``adj``.
        load_at_init: read every video in the constructor.
        verbose: progress bar when loading at init.
    """

    _ARG_NAMES: ClassVar[dict[str, str]] = {**CTScanDataset._ARG_NAMES, "y_inst": "frame_labels_path"}

    def __init__(
        self,
        features_path: str | Path,
        labels_path: str | Path,
        frame_labels_path: str | Path | None = None,
        video_names: Iterable[str] | None = None,
        bag_keys: Sequence[str] | None = None,
        adj_with_dist: bool = False,
        norm_adj: bool = True,
        load_at_init: bool = True,
        verbose: bool = True,
    ) -> None:
        super().__init__(
            features_path=features_path,
            labels_path=labels_path,
            slice_labels_path=frame_labels_path,
            ctscan_names=video_names,
            bag_keys=bag_keys,
            adj_with_dist=adj_with_dist,
            norm_adj=norm_adj,
            load_at_init=load_at_init,
            verbose=verbose,
        )


class TADMILDataset(BinaryClassificationDataset, VideoClassificationDataset):
    """Traffic Anomaly Detection (TAD, Kaggle ``nikanvasei/traffic-anomaly-dataset-tad``): a video is positive
    (1) iff it shows a traffic anomaly.

    Layout::

        root/splits.csv                                 columns bag_name, split ("train" / "test")
        root/features/features_{features}/<video>.npy   (N, D) frame features
        root/labels/<video>.npy                         one value, 0 or 1
        root/frame_labels/<video>.npy                   (N,) 0/1 (optional)

    Bag keys: ``X`` (N, D) float32, ``Y`` () int64, ``y_inst`` (N,) int64 (with frame labels), ``adj`` (N, N)
    sparse float32 (a chain of consecutive frames), ``coords`` (N, 1) int64 frame indices. Videos are in the
    order of ``splits.csv``, so the dataset order is reproducible.

    Args:
        root: the dataset folder.
        features: feature extractor name: ``"resnet18"``, ``"resnet50"`` or ``"vit_b_32"``.
        partition: the ``split`` value to keep, ``"train"`` or ``"test"``.
        bag_keys: keys of each bag; None means ``X``, ``Y``, ``adj``, ``coords`` (torchmil's default).
        adj_with_dist: weight edges by feature distance.
        norm_adj: normalise ``adj``.
        load_at_init: read every video in the constructor.
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
        frame_labels = self.root / "frame_labels"
        # The video constructor sets the chain geometry; the binary label rules come in through the hooks (MRO).
        VideoClassificationDataset.__init__(
            self,
            features_path=features_dir,
            labels_path=self.root / "labels",
            frame_labels_path=frame_labels if frame_labels.is_dir() else None,
            video_names=split_bag_names(self.root / "splits.csv", partition, features_dir),
            bag_keys=("X", "Y", "adj", "coords") if bag_keys is None else bag_keys,
            adj_with_dist=adj_with_dist,
            norm_adj=norm_adj,
            load_at_init=load_at_init,
            verbose=verbose,
        )
