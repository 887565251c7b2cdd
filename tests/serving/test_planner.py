import numpy as np
import pytest

from milsdk.serving.planner import pad_batch, plan_batches


def test_hand_case_packs_largest_first_and_reports_padding():
    # sizes 10, 9, 1 with a budget of 20 slots: [10, 9] (2 x 10 = 20 slots), then [1] alone.
    plan = plan_batches([1, 10, 9], max_instances=20, max_batch_size=4)
    assert [b.indices for b in plan.batches] == [(1, 2), (0,)]
    assert [b.n_max for b in plan.batches] == [10, 1]
    assert plan.real_instances == 20
    assert plan.padded_slots == 21
    assert plan.padded_fraction == pytest.approx(1 / 21)


def test_every_bag_once_and_limits_hold():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 5000, size=300).tolist()
    plan = plan_batches(sizes, max_instances=20000, max_batch_size=8)
    seen = sorted(i for b in plan.batches for i in b.indices)
    assert seen == list(range(len(sizes)))
    for batch in plan.batches:
        assert len(batch.indices) <= 8
        assert batch.n_max == max(sizes[i] for i in batch.indices)
        assert batch.slots <= 20000
    # sorting by size keeps the waste small for this spread of sizes
    assert plan.padded_fraction < 0.05


def test_bag_larger_than_budget_goes_alone():
    plan = plan_batches([50000, 10, 10], max_instances=1000, max_batch_size=16)
    assert plan.batches[0].indices == (0,)
    assert plan.batches[0].slots == 50000
    assert plan.batches[1].indices == (1, 2)


def test_max_batch_size_caps_the_batch():
    plan = plan_batches([5] * 10, max_instances=10**6, max_batch_size=3)
    assert [len(b.indices) for b in plan.batches] == [3, 3, 3, 1]
    assert plan.padded_fraction == 0.0


def test_no_padding_for_models_that_are_not_padding_invariant():
    plan = plan_batches([3, 7, 5], pad=False)
    assert [(b.indices, b.n_max) for b in plan.batches] == [((1,), 7), ((2,), 5), ((0,), 3)]
    assert plan.padded_fraction == 0.0


def test_empty_input_and_bad_limits():
    assert plan_batches([]).batches == ()
    assert plan_batches([]).padded_fraction == 0.0
    with pytest.raises(ValueError):
        plan_batches([1], max_instances=0)


def test_pad_batch_zero_pads_and_masks():
    bags = [
        {"features": np.ones((3, 2), np.float32), "coords": np.full((3, 2), 7, np.float32)},
        {"features": np.full((1, 2), 2, np.float32), "coords": np.zeros((1, 2), np.float32)},
    ]
    out = pad_batch(bags, n_max=4, inputs=["features", "mask", "coords"])
    assert list(out) == ["features", "mask", "coords"]
    assert out["features"].shape == (2, 4, 2) and out["features"].dtype == np.float32
    assert out["mask"].tolist() == [[True, True, True, False], [True, False, False, False]]
    assert out["features"][0, 3].tolist() == [0, 0] and out["features"][1, 0].tolist() == [2, 2]
    assert out["coords"][0, :3].tolist() == [[7, 7]] * 3 and out["coords"][0, 3].tolist() == [0, 0]


def test_pad_batch_edges_pad_with_zero_weight():
    bags = [
        {"features": np.ones((3, 2), np.float32), "edge_index": np.array([[0, 1], [1, 2]]),
         "edge_weight": np.array([0.5, 0.25], np.float32)},
        {"features": np.ones((2, 2), np.float32), "edge_index": np.zeros((2, 0), np.int64),
         "edge_weight": np.zeros(0, np.float32)},
    ]
    out = pad_batch(bags, n_max=3, inputs=["features", "mask", "edge_index", "edge_weight"])
    assert out["edge_index"].shape == (2, 2, 2) and out["edge_index"].dtype == np.int64
    assert out["edge_weight"].tolist() == [[0.5, 0.25], [0.0, 0.0]]


def test_pad_batch_of_one_full_bag_copies_nothing():
    features = np.ones((5, 3), np.float32)
    out = pad_batch([{"features": features}], n_max=5, inputs=["features", "mask"])
    assert out["features"].shape == (1, 5, 3) and np.shares_memory(out["features"], features)
    assert out["mask"].all() and out["mask"].shape == (1, 5)


def test_max_padding_caps_each_requests_padded_share():
    sizes = [100, 99, 98, 60, 59, 10]
    loose = plan_batches(sizes, max_instances=1000, max_batch_size=8)
    assert [b.indices for b in loose.batches] == [(0, 1, 2, 3, 4, 5)]
    capped = plan_batches(sizes, max_instances=1000, max_batch_size=8, max_padding=0.05)
    # 100, 99, 98 pad 1% of 300 slots; adding 60 would pad 10.75% of 400
    assert [b.indices for b in capped.batches] == [(0, 1, 2), (3, 4), (5,)]
    assert all(1 - b.n_real / b.slots <= 0.05 for b in capped.batches)
    assert sorted(i for b in capped.batches for i in b.indices) == list(range(len(sizes)))
    assert plan_batches(sizes, 1000, 8, max_padding=0.0).padded_fraction == 0.0
    with pytest.raises(ValueError, match="max_padding"):
        plan_batches(sizes, 1000, 8, max_padding=1.5)


def test_lognormal_bags_through_the_triton_budget_pad_under_three_percent():
    rng = np.random.default_rng(0)
    sizes = np.clip(np.round(np.exp(rng.normal(np.log(3000), 0.75, size=200))), 1, 100_000).astype(int).tolist()
    assert plan_batches(sizes, 32768, 8).padded_fraction > 0.025  # no cap: 2.9%
    capped = plan_batches(sizes, 32768, 8, max_padding=0.03)
    assert capped.padded_fraction <= 0.03 and all(1 - b.n_real / b.slots <= 0.03 for b in capped.batches)
