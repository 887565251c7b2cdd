"""Synthetic datasets: reproducible from the seed, shuffled, TensorDict with int64 labels, the algorithms' rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from milsdk.datasets import (
    FalseFrequencyMILDataset,
    MCStandardMILDataset,
    SCStandardMILDataset,
    ShiftedMeanMILDataset,
    ToyDataset,
)
from milsdk.errors import DatasetError


def toy(seed=0, **kwargs):
    data = np.arange(100, dtype=np.float64).reshape(50, 2)
    labels = np.arange(50) % 10
    args = {"num_bags": 30, "obj_labels": [7], "bag_size": (3, 8), "seed": seed}
    args.update(kwargs)
    return ToyDataset(data, labels, **args)


FACTORIES = {
    "toy": toy,
    "false_frequency": lambda seed=0, **kw: FalseFrequencyMILDataset(D=4, num_bags=30, seed=seed, **kw),
    "mc_standard": lambda seed=0, **kw: MCStandardMILDataset(D=4, num_bags=30, seed=seed, **kw),
    "sc_standard": lambda seed=0, **kw: SCStandardMILDataset(D=4, num_bags=30, B=5, seed=seed, **kw),
    "shifted_mean": lambda seed=0: ShiftedMeanMILDataset(N=30, M=8, S_low=5, S_high=9, seed=seed),
}


def bags_equal(a, b) -> bool:
    """Same keys and identical tensors in every bag (keys() because a 0-dim TensorDict cannot be iterated)."""
    for i in range(len(a)):
        keys = list(a[i].keys())
        if keys != list(b[i].keys()) or not all(torch.equal(a[i][k], b[i][k]) for k in keys):
            return False
    return True


@pytest.mark.parametrize("name", list(FACTORIES))
def test_tensordict_keys_and_dtypes(name):
    ds = FACTORIES[name]()
    assert len(ds) == 30
    bag = ds[0]
    assert bag.batch_size == torch.Size([])
    assert bag["X"].dtype == torch.float32 and bag["X"].dim() == 2
    assert bag["Y"].dtype == torch.int64 and bag["Y"].shape == ()
    assert bag["y_inst"].dtype == torch.int64 and bag["y_inst"].shape == (bag["X"].shape[0],)
    with pytest.raises(IndexError):
        ds[30]


@pytest.mark.parametrize("name", list(FACTORIES))
def test_reproducible_from_seed_and_seed_matters(name):
    assert bags_equal(FACTORIES[name](seed=3), FACTORIES[name](seed=3))
    assert not bags_equal(FACTORIES[name](seed=3), FACTORIES[name](seed=4))


@pytest.mark.parametrize("name", list(FACTORIES))
def test_global_rng_is_not_used(name):
    np.random.seed(0)
    torch.manual_seed(0)
    first = FACTORIES[name](seed=1)
    np.random.seed(123)
    torch.manual_seed(123)
    assert bags_equal(first, FACTORIES[name](seed=1))


@pytest.mark.parametrize("name", ["toy", "false_frequency", "mc_standard", "sc_standard"])
def test_bags_are_shuffled_with_fixed_positive_count(name):
    labels = [int(b["Y"]) for b in FACTORIES[name]()]
    assert sum(labels) == 15
    assert labels != sorted(labels, reverse=True) and labels != sorted(labels)


def test_toy_bag_positive_iff_it_holds_an_object():
    ds = toy(bag_size=(2, 6))
    for bag in ds:
        y_inst = bag["y_inst"]
        assert int(bag["Y"]) == int(y_inst.max())
        assert 2 <= len(y_inst) <= 6
        # X rows come from data: label of row r is r % 10, object iff 7; X[r] = (2r, 2r + 1).
        rows = (bag["X"][:, 0] / 2).long()
        assert torch.equal(y_inst, (rows % 10 == 7).long())
        if bag["Y"] == 1:
            assert 1 <= int(y_inst.sum()) <= max(1, len(y_inst) // 2)
    sizes = {len(b["X"]) for b in toy(num_bags=200, bag_size=(2, 4))}
    assert sizes == {2, 3, 4}  # both ends included


def test_toy_rejects_impossible_requests():
    with pytest.raises(DatasetError, match=r"no instance has a label in obj_labels=\[42\]"):
        toy(obj_labels=[42])
    with pytest.raises(DatasetError, match=r"bag_size"):
        toy(bag_size=(5, 2))
    with pytest.raises(DatasetError, match=r"data has 50 rows but labels has 3"):
        ToyDataset(np.zeros((50, 2)), np.zeros(3), 4, [1], 3)


def test_false_frequency_counts():
    for bag in FalseFrequencyMILDataset(D=3, num_bags=20, train=True):
        n_concept = int((bag["y_inst"] == 1).sum())
        assert n_concept == (2 if bag["Y"] == 1 else 1)
        assert 1 <= int((bag["y_inst"] == 0).sum()) <= 9
    for bag in FalseFrequencyMILDataset(D=3, num_bags=20, train=False):
        if bag["Y"] == 0:
            assert 35 <= int((bag["y_inst"] == 1).sum()) <= 44
            assert torch.allclose(bag["X"][bag["y_inst"] == 1].mean(), torch.tensor(2.0), atol=0.1)


@pytest.mark.parametrize("train", [True, False])
def test_mc_standard_concepts_and_poison(train):
    for bag in MCStandardMILDataset(D=3, num_bags=20, train=train):
        concept = bag["X"][bag["y_inst"] == 1].mean(1)
        poisoned = bool((bag["y_inst"] == -1).any())
        if bag["Y"] == 1:
            assert len(concept) % 2 == 0 and 2 <= len(concept) <= 6
            assert int((concept > 2.5).sum()) == len(concept) // 2  # as many N(3) as N(2) instances
            assert poisoned == (not train)
        else:
            assert len(concept) == 1
            assert poisoned == train
        if poisoned:
            assert torch.allclose(bag["X"][bag["y_inst"] == -1].mean(), torch.tensor(-10.0), atol=0.5)


@pytest.mark.parametrize("train", [True, False])
def test_sc_standard_background_and_poison(train):
    for bag in SCStandardMILDataset(D=3, num_bags=20, B=6, train=train):
        assert int((bag["y_inst"] == 0).sum()) == 6
        n_concept = int((bag["y_inst"] == 1).sum())
        assert (1 <= n_concept <= 3) if bag["Y"] == 1 else n_concept == 0
        assert bool((bag["y_inst"] == -1).any()) == ((bag["Y"] == 0) == train)


def test_train_and_test_streams_differ():
    a = MCStandardMILDataset(D=3, num_bags=10, train=True, seed=0)
    b = MCStandardMILDataset(D=3, num_bags=10, train=False, seed=0)
    assert not torch.equal(a[0]["X"][-1], b[0]["X"][-1])


def test_shifted_mean_run_and_posterior():
    ds = ShiftedMeanMILDataset(N=40, R=3, S_low=10, S_high=12, K=2, M=6, Delta=4.0, seed=1)
    posteriors = {0: [], 1: []}
    for i in range(len(ds)):
        bag = ds[i]
        n = int(bag["bag_size"])
        assert 10 <= n <= 12 and bag["X"].shape == (n, 6)
        run = torch.nonzero(bag["y_inst"]).ravel()
        if bag["Y"] == 1:
            assert run.tolist() == list(range(int(run[0]), int(run[0]) + 3))  # one contiguous run of R
        else:
            assert len(run) == 0
        p = ds.p_y1_given_h(i)
        assert 0.0 <= p <= 1.0
        posteriors[int(bag["Y"])].append(p)
    # With a large shift the Bayes posterior separates the classes.
    assert np.mean(posteriors[1]) > 0.9 and np.mean(posteriors[0]) < 0.1
    assert ds.get_bag_labels().tolist() == [int(ds[i]["Y"]) for i in range(len(ds))]


def test_shifted_mean_rejects_run_longer_than_bag():
    with pytest.raises(DatasetError, match=r"R <= S_low"):
        ShiftedMeanMILDataset(R=20, S_low=10, S_high=12)
