"""CSV tables: splits.csv partitions, label tables, and their errors."""

from __future__ import annotations

import numpy as np
import pytest

from milsdk.datasets.tables import (
    keep_only_existing_files,
    read_label_table,
    read_split,
    split_bag_names,
    strip_slide_extension,
)
from milsdk.errors import DatasetError


def test_read_split_keeps_partition_in_file_order(tmp_path, layout):
    path = layout.write_csv(
        tmp_path / "splits.csv", ["bag_name", "split"], [["z", "train"], ["a", "test"], ["m", "train"]]
    )
    assert read_split(path, "train") == ["z", "m"]
    assert read_split(path, "test") == ["a"]


def test_read_split_missing_columns_names_file_and_columns(tmp_path, layout):
    path = layout.write_csv(tmp_path / "splits.csv", ["name", "fold"], [["a", "train"]])
    with pytest.raises(DatasetError) as err:
        read_split(path, "train")
    msg = str(err.value)
    assert str(path) in msg and "['bag_name', 'split']" in msg and "['name', 'fold']" in msg


def test_read_split_unknown_partition_lists_splits(tmp_path, layout):
    path = layout.write_csv(tmp_path / "splits.csv", ["bag_name", "split"], [["a", "train"], ["b", "test"]])
    with pytest.raises(
        DatasetError, match=r"no bags with split == 'val'; splits in file: \['test', 'train'\]"
    ):
        read_split(path, "val")


def test_label_table_strips_slide_extensions_and_parses_numbers(tmp_path, layout):
    path = layout.write_csv(
        tmp_path / "labels.csv", ["slide_id", "label"], [["s1.svs", "1"], ["s2", "0"], ["s.3", "2.5"]]
    )
    assert read_label_table(path, "slide_id", "label") == {"s1": 1, "s2": 0, "s.3": 2.5}
    assert strip_slide_extension("case.ndpi") == "case" and strip_slide_extension("a.b") == "a.b"


def test_label_table_non_numeric_label(tmp_path, layout):
    path = layout.write_csv(tmp_path / "labels.csv", ["slide_id", "label"], [["s1", "tumor"]])
    with pytest.raises(DatasetError, match=r"label 'tumor' of bag 's1' in column 'label' is not a number"):
        read_label_table(path, "slide_id", "label")


def test_keep_only_existing_files_and_split_bag_names(tmp_path, layout):
    feats = tmp_path / "feats"
    for name in ("a", "c"):
        layout.write_array(feats / f"{name}.npy", np.zeros((1, 2)))
    assert keep_only_existing_files(feats, ["c", "b", "a"]) == ["c", "a"]
    splits = layout.write_csv(
        tmp_path / "splits.csv", ["bag_name", "split"], [["b", "train"], ["a", "train"]]
    )
    assert split_bag_names(splits, "train", feats) == ["a"]
    with pytest.raises(DatasetError, match=r"features folder not found"):
        split_bag_names(splits, "train", tmp_path / "missing")
    only_b = layout.write_csv(tmp_path / "only_b.csv", ["bag_name", "split"], [["b", "train"]])
    with pytest.raises(DatasetError, match=r"none of the 1 'train' bags .* has a '\.npy' file"):
        split_bag_names(only_b, "train", feats)


def test_missing_csv(tmp_path):
    with pytest.raises(DatasetError, match=r"splits\.csv: file not found"):
        read_split(tmp_path / "splits.csv", "train")
