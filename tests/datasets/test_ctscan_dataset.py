"""CTScanDataset: slice-index coords and a chain adjacency.

(Named ``test_ctscan_dataset`` because ``tests/visualize/test_ctscan.py`` exists and test basenames must be unique.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from milsdk.datasets import CTScanDataset
from milsdk.errors import DatasetError


@pytest.fixture
def ct_folders(tmp_path, layout, rng):
    scans = {
        "scan2": {
            "features": rng.normal(size=(4, 5)),
            "labels": np.array([1]),
            "inst_labels": np.array([0, 1, 1, 0]),
        },
        "scan1": {
            "features": rng.normal(size=(2, 5)),
            "labels": np.array([0]),
            "inst_labels": np.zeros(2, int),
        },
    }
    return layout.write_bags(tmp_path, scans)


def test_coords_are_slice_indices_and_adj_a_chain(ct_folders):
    ds = CTScanDataset(ct_folders["features"], ct_folders["labels"], ct_folders["inst_labels"])
    assert ds.get_bag_names() == ["scan1", "scan2"]
    bag = ds[1]
    assert list(bag.keys()) == ["X", "Y", "y_inst", "adj", "coords"]
    assert bag["coords"].tolist() == [[0], [1], [2], [3]] and bag["coords"].dtype == torch.int64
    adj = bag["adj"].to_dense().numpy()
    # Chain 0-1-2-3: degrees 1, 2, 2, 1.
    expected = np.zeros((4, 4))
    for i, j, w in [(0, 1, 1 / np.sqrt(2)), (1, 2, 1 / 2), (2, 3, 1 / np.sqrt(2))]:
        expected[i, j] = expected[j, i] = w
    np.testing.assert_allclose(adj, expected, rtol=1e-6)
    assert bag["y_inst"].tolist() == [0, 1, 1, 0]


def test_without_slice_labels_default_keys_leave_out_y_inst(ct_folders):
    ds = CTScanDataset(ct_folders["features"], ct_folders["labels"])
    assert list(ds[0].keys()) == ["X", "Y", "adj", "coords"]
    with pytest.raises(DatasetError, match=r"bag key 'y_inst' needs slice_labels_path"):
        CTScanDataset(ct_folders["features"], ct_folders["labels"], bag_keys=["X", "y_inst"])


def test_ctscan_names_select_scans(ct_folders):
    ds = CTScanDataset(
        ct_folders["features"], ct_folders["labels"], ctscan_names=["scan2"], load_at_init=False
    )
    assert len(ds) == 1 and ds[0]["X"].shape == (4, 5) and ds[0]["Y"].item() == 1
