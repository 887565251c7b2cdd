"""SizeAwareBatchSampler: every bag once, budget, determinism, padded-slot waste, replicas."""

import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from milsdk.data import SizeAwareBatchSampler, collate_fn, padding_waste


def wsi_sizes(n=1000, seed=0):
    """Log-normal bag sizes like whole-slide images: median 3000 patches, sigma 1."""
    rng = np.random.default_rng(seed)
    return np.maximum(1, rng.lognormal(mean=np.log(3000), sigma=1.0, size=n)).astype(np.int64)


def check_batches(batches, sizes, budget):
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(sizes)))  # every bag exactly once
    for b in batches:
        assert len(b) >= 1
        assert len(b) == 1 or len(b) * sizes[b].max() <= budget


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_bag_once_within_budget(shuffle):
    sizes = wsi_sizes(300)
    sizes[7] = 250_000  # larger than the budget: a batch of its own
    sampler = SizeAwareBatchSampler(sizes, max_instances=100_000, shuffle=shuffle, seed=1)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        check_batches(batches, sizes, 100_000)
        assert [7] in batches


def test_max_batch_size():
    sizes = np.full(50, 10)
    batches = list(SizeAwareBatchSampler(sizes, max_instances=10_000, max_batch_size=8))
    check_batches(batches, sizes, 10_000)
    assert max(len(b) for b in batches) == 8 and len(batches) == 7


def test_deterministic_given_seed_and_epoch():
    sizes = wsi_sizes(500)
    a = SizeAwareBatchSampler(sizes, max_instances=50_000, seed=3)
    b = SizeAwareBatchSampler(sizes, max_instances=50_000, seed=3)
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b)
    b.set_epoch(5)
    assert list(a) != list(b)
    c = SizeAwareBatchSampler(sizes, max_instances=50_000, seed=4)
    c.set_epoch(4)
    assert list(a) != list(c)


def test_padding_waste_at_most_5_percent_on_lognormal_sizes():
    sizes = wsi_sizes(1000)
    sampler = SizeAwareBatchSampler(sizes, max_instances=100_000, seed=0)
    wastes = []
    for epoch in range(10):
        sampler.set_epoch(epoch)
        wastes.append(sampler.padding_waste)
        assert sampler.padding_waste == pytest.approx(padding_waste(list(sampler), sizes))
    assert max(wastes) <= 0.05, wastes
    # a random batching with the same number of batches wastes far more
    rng = np.random.default_rng(0)
    random_batches = np.array_split(rng.permutation(len(sizes)), len(sampler))
    assert padding_waste(random_batches, sizes) > 0.5


def test_padding_waste_hand_case():
    # batches [2, 3] -> 2*3 slots, 1 padded; [5] -> 5 slots, none padded: 1 / 11
    assert padding_waste([[0, 1], [2]], [2, 3, 5]) == pytest.approx(1 / 11)


@pytest.mark.parametrize("drop_last", [False, True])
def test_replicas_partition_the_epoch(drop_last):
    sizes = wsi_sizes(301, seed=2)
    world = 3
    single = SizeAwareBatchSampler(sizes, max_instances=100_000, num_replicas=1, rank=0, seed=5)
    samplers = [
        SizeAwareBatchSampler(
            sizes, max_instances=100_000, num_replicas=world, rank=r, seed=5, drop_last=drop_last
        )
        for r in range(world)
    ]
    for epoch in (0, 1):
        per_rank = []
        single.set_epoch(epoch)
        for s in samplers:
            s.set_epoch(epoch)
            per_rank.append(list(s))
        assert len({len(b) for b in per_rank}) == 1  # same number of batches on every rank
        flat = [i for batches in per_rank for b in batches for i in b]
        assert len(flat) == len(set(flat))  # no bag on two ranks
        if not drop_last:
            assert sorted(flat) == list(range(len(sizes)))
            # balancing splits batches into two homogeneous halves: never more padding than one replica's plan
            assert samplers[0].padding_waste <= single.padding_waste


def test_fewer_bags_than_replicas_repeats_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="milsdk.data.sampler"):
        lens = [len(SizeAwareBatchSampler([5, 6], 100, num_replicas=4, rank=r)) for r in range(4)]
    assert lens == [1, 1, 1, 1]
    assert "repeating" in caplog.text


def test_works_as_dataloader_batch_sampler():
    g = torch.Generator().manual_seed(0)
    sizes = [3, 9, 4, 8, 10, 2]
    bags = [{"X": torch.randn(n, 5, generator=g), "Y": torch.tensor(1.0)} for n in sizes]
    sampler = SizeAwareBatchSampler(sizes, max_instances=20, shuffle=False)
    batches = list(DataLoader(bags, batch_sampler=sampler, collate_fn=collate_fn))
    assert sum(b["X"].shape[0] for b in batches) == len(bags)
    assert all(b["X"].shape[0] * b["X"].shape[1] <= 20 for b in batches)
    assert sum(int(b["mask"].sum()) for b in batches) == sum(sizes)


def test_rejects_bad_arguments():
    for kwargs in (
        {"bag_sizes": [], "max_instances": 10},
        {"bag_sizes": [0, 3], "max_instances": 10},
        {"bag_sizes": [3], "max_instances": 0},
        {"bag_sizes": [3], "max_instances": 10, "num_replicas": 2, "rank": 2},
    ):
        with pytest.raises(ValueError):
            SizeAwareBatchSampler(**kwargs)
