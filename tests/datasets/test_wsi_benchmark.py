"""WSIBenchmarkDataset: the patches_{ps}/... layout, splits.csv partitions, grid coords and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from milsdk.datasets import WSIBenchmarkDataset
from milsdk.errors import DatasetError


def test_train_partition_keys_and_grid_coords(tmp_path, layout):
    layout.write_wsi_benchmark(tmp_path)
    ds = WSIBenchmarkDataset(tmp_path, features="UNI", partition="train")
    # s4 is listed in splits.csv but has no features file; names are sorted.
    assert ds.get_bag_names() == ["s1", "s2"]
    bag = ds[0]
    assert list(bag.keys()) == ["X", "Y", "y_inst", "adj", "coords"]
    assert bag["X"].shape == (6, 8) and bag["X"].dtype == torch.float32
    assert bag["Y"].shape == () and bag["Y"].item() == 1
    assert bag["y_inst"].tolist() == [0, 1, 1, 0, 0, 0]
    # Pixel coords (step 512, offset 1024) -> grid starting at 0.
    assert bag["coords"].tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    adj = bag["adj"].to_dense()
    assert adj.dtype == torch.float32 and torch.count_nonzero(adj) == 2 * 11  # 2x3 king graph: 11 edges
    assert [int(y) for y in ds.get_bag_labels()] == [1, 0]


def test_test_partition(tmp_path, layout):
    layout.write_wsi_benchmark(tmp_path)
    ds = WSIBenchmarkDataset(tmp_path, partition="test", bag_keys=["X", "Y", "coords"])
    assert ds.get_bag_names() == ["s3"] and list(ds[0].keys()) == ["X", "Y", "coords"]


def test_without_patch_labels_folder_y_inst_is_derived(tmp_path, layout):
    layout.write_wsi_benchmark(tmp_path, patch_labels=False)
    ds = WSIBenchmarkDataset(tmp_path)
    assert ds[0]["y_inst"].tolist() == [-1] * 6 and ds[1]["y_inst"].tolist() == [0] * 4


def test_other_patch_size_and_features(tmp_path, layout):
    layout.write_wsi_benchmark(tmp_path, features="resnet50_bt", patch_size=256)
    ds = WSIBenchmarkDataset(tmp_path, features="resnet50_bt", patch_size=256)
    assert ds[1]["coords"].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]


def test_splits_csv_without_needed_columns(tmp_path, layout):
    layout.write_wsi_benchmark(tmp_path)
    layout.write_csv(tmp_path / "splits.csv", ["slide", "split"], [["s1", "train"]])
    with pytest.raises(DatasetError) as err:
        WSIBenchmarkDataset(tmp_path)
    assert str(tmp_path / "splits.csv") in str(err.value) and "['bag_name']" in str(err.value)


def test_missing_splits_csv_and_folders(tmp_path, layout):
    layout.write_wsi_benchmark(tmp_path)
    with pytest.raises(DatasetError, match=r"features_UNI2: features folder not found"):
        WSIBenchmarkDataset(tmp_path, features="UNI2")
    import shutil

    shutil.rmtree(tmp_path / "patches_512" / "coords")
    with pytest.raises(DatasetError, match=r"coords_path .*patches_512/coords: folder not found"):
        WSIBenchmarkDataset(tmp_path)
    (tmp_path / "splits.csv").unlink()
    with pytest.raises(DatasetError, match=r"splits\.csv: file not found"):
        WSIBenchmarkDataset(tmp_path)


def test_missing_label_file_names_slide(tmp_path, layout):
    layout.write_wsi_benchmark(tmp_path)
    (tmp_path / "patches_512" / "labels" / "s2.npy").unlink()
    with pytest.raises(DatasetError, match=r"bag 's2': label file not found: .*patches_512/labels/s2\.npy"):
        WSIBenchmarkDataset(tmp_path)


def test_coords_rows_differ_from_features(tmp_path, layout):
    layout.write_wsi_benchmark(tmp_path)
    layout.write_array(tmp_path / "patches_512" / "coords" / "s2.npy", np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(
        DatasetError, match=r"coords/s2\.npy: coords have N=3 rows, features .*s2\.npy have N=4"
    ):
        WSIBenchmarkDataset(tmp_path)
