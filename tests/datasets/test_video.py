"""VideoClassificationDataset and TADMILDataset on a tiny folder (given as pathlib.Path)."""

from __future__ import annotations

import numpy as np
import pytest

from milsdk.datasets import TADMILDataset, VideoClassificationDataset


def _tad(root, n_frames=(3, 4)):
    feats = root / "features" / "features_resnet50"
    feats.mkdir(parents=True)
    (root / "labels").mkdir()
    rows = ["bag_name,split"]
    for i, n in enumerate(n_frames):
        np.save(feats / f"v{i}.npy", np.arange(n * 2, dtype=np.float32).reshape(n, 2))
        np.save(root / "labels" / f"v{i}.npy", np.array([i % 2]))
        rows.append(f"v{i},train")
    (root / "splits.csv").write_text("\n".join(rows) + "\n")
    return root


def test_video_dataset_chain_and_coords(tmp_path):
    root = _tad(tmp_path)
    ds = VideoClassificationDataset(root / "features" / "features_resnet50", root / "labels", verbose=False)
    bag = ds[1]
    assert bag["X"].shape == (4, 2) and bag["coords"].squeeze(-1).tolist() == [0, 1, 2, 3]
    adj = bag["adj"].to_dense()
    assert (adj != 0).int().tolist() == [[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0]]


def test_tad_dataset_reference_keys_and_missing_folder(tmp_path):
    ds = TADMILDataset(_tad(tmp_path))
    assert len(ds) == 2 and set(ds[0].keys()) == {"X", "Y", "adj", "coords"} and int(ds[1]["Y"]) == 1
    with pytest.raises(FileNotFoundError):
        TADMILDataset(tmp_path / "nowhere")
