"""DigitsMILDataset: bags of sklearn's 8x8 digits; positive iff the target digit is present; disjoint splits."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from milsdk.data import collate_fn
from milsdk.datasets import DigitsMILDataset
from milsdk.datasets import digits as digits_module
from milsdk.errors import DatasetError


@pytest.fixture(scope="module")
def train_set():
    return DigitsMILDataset(num_bags=60, bag_size=(4, 12), target_digit=9, train=True, seed=0)


def test_keys_shapes_and_dtypes(train_set):
    bag = train_set[0]
    n = bag["X"].shape[0]
    assert list(bag.keys()) == ["X", "Y", "y_inst", "adj", "coords"]
    assert bag["X"].shape == (n, 64) and bag["X"].dtype == torch.float32
    assert 0.0 <= float(bag["X"].min()) and float(bag["X"].max()) <= 1.0
    assert bag["Y"].shape == () and bag["Y"].dtype == torch.int64
    assert bag["y_inst"].shape == (n,) and bag["y_inst"].dtype == torch.int64
    assert bag["coords"].shape == (n, 2) and bag["coords"].dtype == torch.int64
    assert bag["adj"].is_sparse and bag["adj"].dtype == torch.float32 and bag["adj"].shape == (n, n)


def test_positive_iff_bag_holds_the_target_digit(train_set):
    for i, bag in enumerate(train_set):
        digits = train_set.digits[train_set.get_bag_indices(i)]
        assert torch.equal(bag["y_inst"], torch.from_numpy((digits == 9).astype(np.int64)))
        assert int(bag["Y"]) == int((digits == 9).any())
        assert 4 <= len(digits) <= 12
    labels = [int(b["Y"]) for b in train_set]
    assert sum(labels) == 30 and labels != sorted(labels, reverse=True)


def test_instances_are_the_real_images(train_set):
    from sklearn.datasets import load_digits

    rows = train_set.source_index[train_set.get_bag_indices(3)]
    np.testing.assert_allclose(train_set[3]["X"].numpy(), load_digits().data[rows] / 16.0, rtol=1e-6)


def test_coords_are_a_near_square_grid(train_set):
    for bag in train_set:
        n = bag["X"].shape[0]
        cols = int(np.ceil(np.sqrt(n)))
        coords = bag["coords"]
        assert coords[:, 1].max() == min(cols, n) - 1 and coords[:, 0].max() == (n - 1) // cols
        assert len({tuple(c) for c in coords.tolist()}) == n  # one instance per cell


def test_train_and_test_images_are_disjoint():
    train = DigitsMILDataset(num_bags=5, train=True, seed=1)
    test = DigitsMILDataset(num_bags=5, train=False, seed=2)
    assert set(train.source_index.tolist()).isdisjoint(test.source_index.tolist())
    assert len(train.source_index) + len(test.source_index) == 1797
    assert abs(len(test.source_index) - 0.3 * 1797) < 1
    used = {int(r) for i in range(len(test)) for r in test.source_index[test.get_bag_indices(i)]}
    assert used.isdisjoint(train.source_index.tolist())


def test_reproducible_from_seed():
    a = DigitsMILDataset(num_bags=10, seed=5)
    b = DigitsMILDataset(num_bags=10, seed=5)
    c = DigitsMILDataset(num_bags=10, seed=6)
    assert all(torch.equal(a[i]["X"], b[i]["X"]) for i in range(10))
    assert not all(
        a[i]["X"].shape == c[i]["X"].shape and torch.equal(a[i]["X"], c[i]["X"]) for i in range(10)
    )


def test_batches_through_collate(train_set):
    batch = collate_fn([train_set[0], train_set[1]])
    assert batch["X"].shape[0] == 2 and batch["coords"].shape[-1] == 2 and batch["mask"].dtype == torch.bool


def test_bag_keys_and_bad_arguments():
    ds = DigitsMILDataset(num_bags=4, bag_keys=["X", "Y", "coords"])
    assert list(ds[0].keys()) == ["X", "Y", "coords"]
    with pytest.raises(DatasetError, match=r"target_digit must be 0-9, got 10"):
        DigitsMILDataset(target_digit=10)
    with pytest.raises(DatasetError, match=r"unknown key\(s\) \['mask'\]"):
        DigitsMILDataset(bag_keys=["X", "mask"])


def test_missing_scikit_learn_says_how_to_install(monkeypatch):
    digits_module._load_digits.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    try:
        with pytest.raises(DatasetError, match=r"pip install scikit-learn") as err:
            DigitsMILDataset(num_bags=2)
        assert "\n" not in str(err.value)
    finally:
        digits_module._load_digits.cache_clear()
