"""BinaryClassificationDataset: 0/1 labels, optional instance labels, consistency rules."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from milsdk.datasets import BinaryClassificationDataset
from milsdk.errors import DatasetError


def test_without_inst_labels_y_inst_is_derived(tmp_path, layout, three_bags):
    for bag in three_bags.values():
        del bag["inst_labels"]
    folders = layout.write_bags(tmp_path, three_bags)
    ds = BinaryClassificationDataset(folders["features"], folders["labels"], coords_path=folders["coords"])
    assert list(ds[0].keys()) == ["X", "Y", "y_inst", "adj", "coords"]
    assert ds[0]["y_inst"].tolist() == [-1] * 9  # positive: which instances are positive is unknown
    assert ds[1]["y_inst"].tolist() == [0] * 4  # negative: all instances negative
    assert ds[0]["y_inst"].dtype == torch.int64
    explicit = BinaryClassificationDataset(
        folders["features"], folders["labels"], bag_keys=["X", "Y", "y_inst"]
    )
    assert explicit[1]["y_inst"].tolist() == [0] * 4


def test_labels_are_0dim_int64(tmp_path, layout, three_bags):
    three_bags["a"]["labels"] = np.array([[1.0]])
    folders = layout.write_bags(tmp_path, three_bags)
    ds = BinaryClassificationDataset(
        folders["features"], folders["labels"], folders["inst_labels"], verbose=False
    )
    assert ds[0]["Y"].shape == () and ds[0]["Y"].dtype == torch.int64 and ds[0]["Y"].item() == 1
    assert ds[0]["y_inst"].tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0]
    assert [int(y) for y in ds.get_bag_labels()] == [1, 0, 0]


def test_contradicting_inst_labels_become_unknown(tmp_path, layout, three_bags, caplog):
    three_bags["b"]["inst_labels"] = np.array([0, 1, 0, 0])  # a positive instance in a negative bag
    three_bags["a"]["inst_labels"] = np.zeros(9, dtype=np.int64)  # a positive bag with only negatives
    folders = layout.write_bags(tmp_path, three_bags)
    with caplog.at_level(logging.WARNING, logger="milsdk.datasets.binary"):
        ds = BinaryClassificationDataset(folders["features"], folders["labels"], folders["inst_labels"])
    assert ds[1]["y_inst"].tolist() == [-1] * 4
    assert ds[0]["y_inst"].tolist() == [-1] * 9
    assert sum("contradict bag label" in r.getMessage() for r in caplog.records) == 2
    assert any(str(folders["inst_labels"] / "b.npy") in r.getMessage() for r in caplog.records)


def test_unknown_inst_labels_in_positive_bag_are_kept(tmp_path, layout, three_bags):
    three_bags["a"]["inst_labels"] = np.array([-1, 0, 0, -1, 0, 0, 0, 0, 0])
    folders = layout.write_bags(tmp_path, three_bags)
    ds = BinaryClassificationDataset(folders["features"], folders["labels"], folders["inst_labels"])
    assert ds[0]["y_inst"].tolist() == [-1, 0, 0, -1, 0, 0, 0, 0, 0]


def test_non_binary_label_names_file(tmp_path, layout, three_bags):
    three_bags["c"]["labels"] = np.array([2])
    folders = layout.write_bags(tmp_path, three_bags)
    with pytest.raises(DatasetError, match=r"c\.npy: a binary label must be 0 or 1, found 2"):
        BinaryClassificationDataset(folders["features"], folders["labels"])


def test_multi_value_label_names_file(tmp_path, layout, three_bags):
    three_bags["c"]["labels"] = np.array([0, 1])
    folders = layout.write_bags(tmp_path, three_bags)
    with pytest.raises(DatasetError, match=r"c\.npy: a binary label must be one value, found shape \(2,\)"):
        BinaryClassificationDataset(folders["features"], folders["labels"], load_at_init=False)[2]


def test_bad_inst_labels_name_file(tmp_path, layout, three_bags):
    three_bags["b"]["inst_labels"] = np.array([0, 2, 0, 0])
    folders = layout.write_bags(tmp_path, three_bags)
    with pytest.raises(
        DatasetError, match=r"inst_labels/b\.npy: instance labels must be \(N,\) in \{-1, 0, 1\}"
    ):
        BinaryClassificationDataset(folders["features"], folders["labels"], folders["inst_labels"])


def test_inst_labels_n_mismatch_names_file(tmp_path, layout, three_bags):
    three_bags["b"]["inst_labels"] = np.zeros(3, dtype=np.int64)
    folders = layout.write_bags(tmp_path, three_bags)
    with pytest.raises(DatasetError, match=r"inst_labels/b\.npy: instance labels have shape \(3,\)"):
        BinaryClassificationDataset(folders["features"], folders["labels"], folders["inst_labels"])


def test_h5_files(tmp_path, layout, three_bags):
    folders = layout.write_bags(tmp_path, three_bags, ext=".h5")
    ds = BinaryClassificationDataset(
        folders["features"], folders["labels"], folders["inst_labels"], folders["coords"], file_ext=".h5"
    )
    assert ds[0]["Y"].item() == 1 and ds[0]["adj"].shape == (9, 9)
