"""RSNAMILDataset: binary CT bags from root/features/features_{name}/, labels/, slice_labels/ and splits.csv."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from milsdk.datasets import BinaryClassificationDataset, CTScanDataset, RSNAMILDataset
from milsdk.errors import DatasetError


@pytest.fixture
def rsna_root(tmp_path, layout, rng):
    for name, label, inst in [("ct_b", 1, [0, 1, 0]), ("ct_a", 0, [0, 0]), ("ct_t", 0, [0])]:
        layout.write_array(
            tmp_path / "features" / "features_resnet50" / f"{name}.npy", rng.normal(size=(len(inst), 4))
        )
        layout.write_array(tmp_path / "labels" / f"{name}.npy", np.array([label]))
        layout.write_array(tmp_path / "slice_labels" / f"{name}.npy", np.array(inst))
    layout.write_csv(
        tmp_path / "splits.csv",
        ["bag_name", "split"],
        [["ct_b", "train"], ["ct_a", "train"], ["ct_t", "test"]],
    )
    return tmp_path


def test_binary_ct_bags(rsna_root):
    ds = RSNAMILDataset(rsna_root)
    assert isinstance(ds, BinaryClassificationDataset) and isinstance(ds, CTScanDataset)
    assert ds.get_bag_names() == ["ct_a", "ct_b"]
    bag = ds[1]
    assert bag["Y"].shape == () and bag["Y"].dtype == torch.int64 and bag["Y"].item() == 1
    assert bag["y_inst"].tolist() == [0, 1, 0]
    assert bag["coords"].tolist() == [[0], [1], [2]]
    np.testing.assert_allclose(bag["adj"].to_dense().numpy()[0, 1], 1 / np.sqrt(2), rtol=1e-6)
    assert RSNAMILDataset(rsna_root, partition="test").get_bag_names() == ["ct_t"]


def test_without_slice_labels_y_inst_is_derived(rsna_root):
    import shutil

    shutil.rmtree(rsna_root / "slice_labels")
    ds = RSNAMILDataset(rsna_root)
    assert ds[0]["y_inst"].tolist() == [0, 0] and ds[1]["y_inst"].tolist() == [-1, -1, -1]


def test_non_binary_label_is_refused(rsna_root, layout):
    layout.write_array(rsna_root / "labels" / "ct_a.npy", np.array([3]))
    with pytest.raises(DatasetError, match=r"labels/ct_a\.npy: a binary label must be 0 or 1"):
        RSNAMILDataset(rsna_root)


def test_splits_without_split_column(rsna_root, layout):
    layout.write_csv(rsna_root / "splits.csv", ["bag_name", "fold"], [["ct_a", "0"]])
    with pytest.raises(DatasetError, match=r"splits\.csv: missing column\(s\) \['split'\]"):
        RSNAMILDataset(rsna_root)
