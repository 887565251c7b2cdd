"""Property tests (hypothesis): padding round trips, the batch planner, and the padding invariance of every model.

Each property holds for any sizes hypothesis draws, not just the hand-picked ones of the unit tests:

- ``milsdk.data.pad_tensors`` / ``collate_fn`` and the serving planner's ``pad_batch``: unpadding a padded batch
  gives every bag back exactly, and every padded slot holds the contract's pad value;
- ``plan_batches``: every bag is in exactly one batch, batches keep to the budget unless a bag alone exceeds it,
  and the client built on it returns one result per bag, in input order;
- every registered model gives a bag the same logits and attention alone as padded among other random bags with
  garbage in the padding (<= 1e-5).

Example counts are kept small (the file runs in seconds); ``deadline=None`` because a first model call is slow.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from milsdk.contract import COORDS, EDGE_INDEX, EDGE_WEIGHT, FEATURES, MASK, input_kind
from milsdk.data import collate_fn, pad_tensors
from milsdk.export import export_onnx
from milsdk.models import ABMIL, get_model_class, list_models
from milsdk.serving import MILClient
from milsdk.serving.planner import pad_batch, plan_batches
from milsdk.utils.graph import coords_graph

D = 6
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
sizes_st = st.lists(st.integers(1, 40), min_size=1, max_size=12)


# -- collate / pad / unpad -----------------------------------------------------------------------------------------
@FAST
@given(lengths=st.lists(st.integers(0, 9), min_size=1, max_size=6), width=st.integers(1, 4),
       fill=st.sampled_from([0.0, -1.0, 7.5]), seed=st.integers(0, 2**16))
def test_pad_tensors_unpads_to_the_inputs(lengths, width, fill, seed):
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(n, width, generator=g) for n in lengths]
    padded, mask = pad_tensors(tensors, padding_value=fill)
    assert padded.shape == (len(lengths), max(lengths), width) and mask.dtype == torch.bool
    for i, t in enumerate(tensors):
        assert mask[i].tolist() == [True] * len(t) + [False] * (max(lengths) - len(t))
        assert torch.equal(padded[i][mask[i]], t)
        assert bool((padded[i][~mask[i]] == fill).all())


def _bag(n: int, rng: np.random.Generator, sparse: bool) -> dict[str, torch.Tensor]:
    adj = torch.from_numpy((rng.random((n, n)) < 0.3).astype(np.float32) * rng.random((n, n)).astype(np.float32))
    return {
        "X": torch.from_numpy(rng.standard_normal((n, D)).astype(np.float32)),
        "Y": torch.tensor(int(rng.integers(0, 2))),
        "y_inst": torch.from_numpy(rng.integers(0, 2, n)),
        "coords": torch.from_numpy(rng.integers(0, 100, (n, 2))),
        "adj": adj.to_sparse() if sparse else adj,
    }


@FAST
@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=5), sparse=st.booleans(), seed=st.integers(0, 2**16))
def test_collate_unpads_every_key_of_every_bag(lengths, sparse, seed):
    rng = np.random.default_rng(seed)
    bags = [_bag(n, rng, sparse) for n in lengths]
    batch = collate_fn(bags)
    n_max = max(lengths)
    mask = batch["mask"]
    assert mask.shape == (len(bags), n_max) and mask.sum(1).tolist() == lengths
    assert batch["Y"].tolist() == [int(b["Y"]) for b in bags]
    adj = batch["adj"].to_dense() if sparse else batch["adj"]
    assert batch["adj"].is_sparse == sparse and adj.shape == (len(bags), n_max, n_max)
    for i, (bag, n) in enumerate(zip(bags, lengths)):
        for key in ("X", "y_inst", "coords"):
            assert torch.equal(batch[key][i][mask[i]], bag[key])
            assert bool((batch[key][i][~mask[i]] == 0).all())
        want = bag["adj"].to_dense() if sparse else bag["adj"]
        assert torch.equal(adj[i, :n, :n], want)
        assert float(adj[i].abs().sum()) == pytest.approx(float(want.abs().sum()))  # nothing outside the bag


@st.composite
def serving_bags(draw):
    """Bags in the client's form: features (N, D), coords (N, 2), edges (2, E) within the bag, weights (E,)."""
    lengths = draw(st.lists(st.integers(1, 12), min_size=1, max_size=5))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    bags = []
    for n in lengths:
        e = int(rng.integers(0, 3 * n))
        bags.append({
            FEATURES: rng.standard_normal((n, D)).astype(np.float32),
            COORDS: rng.integers(0, 50, (n, 2)).astype(np.float32),
            EDGE_INDEX: rng.integers(0, n, (2, e)).astype(np.int64),
            EDGE_WEIGHT: rng.random(e).astype(np.float32),
        })
    return bags, max(lengths) + draw(st.integers(0, 4))


@FAST
@given(drawn=serving_bags(), graph=st.booleans())
def test_pad_batch_unpads_to_the_bags_with_the_contracts_pad_values(drawn, graph):
    bags, n_max = drawn
    inputs = [FEATURES, MASK, COORDS] + ([EDGE_INDEX, EDGE_WEIGHT] if graph else [])
    out = pad_batch(bags, n_max, inputs)
    assert sorted(out) == sorted(inputs)
    e_max = max(1, max(b[EDGE_INDEX].shape[1] for b in bags))
    for i, bag in enumerate(bags):
        n = bag[FEATURES].shape[0]
        assert out[MASK][i].tolist() == [True] * n + [False] * (n_max - n)
        for name in (FEATURES, COORDS):
            assert out[name].shape == (len(bags), n_max, bag[name].shape[1])
            np.testing.assert_array_equal(out[name][i, :n], bag[name])
            assert (out[name][i, n:] == input_kind(name).pad_value).all()
        if graph:
            e = bag[EDGE_INDEX].shape[1]
            assert out[EDGE_INDEX].shape == (len(bags), 2, e_max) and out[EDGE_WEIGHT].shape == (len(bags), e_max)
            np.testing.assert_array_equal(out[EDGE_INDEX][i, :, :e], bag[EDGE_INDEX])
            np.testing.assert_array_equal(out[EDGE_WEIGHT][i, :e], bag[EDGE_WEIGHT])
            assert (out[EDGE_INDEX][i, :, e:] == 0).all() and (out[EDGE_WEIGHT][i, e:] == 0).all()
    assert out[FEATURES].dtype == np.float32 and out[MASK].dtype == bool
    if graph:
        assert out[EDGE_INDEX].dtype == np.int64 and out[EDGE_WEIGHT].dtype == np.float32


# -- the planner ---------------------------------------------------------------------------------------------------
@FAST
@given(sizes=st.lists(st.integers(1, 5000), max_size=60), max_instances=st.integers(1, 20000),
       max_batch_size=st.integers(1, 20), pad=st.booleans(), max_padding=st.sampled_from([1.0, 0.5, 0.03, 0.0]))
def test_plan_returns_every_bag_once_within_the_budget(sizes, max_instances, max_batch_size, pad, max_padding):
    plan = plan_batches(sizes, max_instances=max_instances, max_batch_size=max_batch_size, pad=pad,
                        max_padding=max_padding)
    placed = [i for batch in plan.batches for i in batch.indices]
    assert sorted(placed) == list(range(len(sizes)))  # every bag exactly once
    assert plan.real_instances == sum(sizes)
    previous = None
    for batch in plan.batches:
        members = [sizes[i] for i in batch.indices]
        assert 1 <= len(batch.indices) <= (max_batch_size if pad else 1)
        assert batch.n_max == max(members) and batch.n_real == sum(members)
        assert list(batch.indices) == sorted(batch.indices, key=lambda i: (-sizes[i], i))  # largest first, stable
        if len(batch.indices) > 1:
            assert batch.slots <= max_instances  # only a bag alone may exceed the budget
            assert 1.0 - batch.n_real / batch.slots <= max_padding + 1e-12
        if previous is not None:
            assert batch.n_max <= previous  # batches go from the largest bags to the smallest
        previous = batch.n_max
    assert 0.0 <= plan.padded_fraction < 1.0 or not sizes


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    torch.manual_seed(0)
    return export_onnx(ABMIL(in_shape=(D,), att_dim=8).eval(), tmp_path_factory.mktemp("properties") / "model.onnx")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 30), min_size=1, max_size=10), budget=st.integers(1, 80),
       max_batch_size=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_client_returns_one_result_per_bag_in_input_order(onnx_model, sizes, budget, max_batch_size, seed):
    rng = np.random.default_rng(seed)
    bags = [rng.standard_normal((n, D)).astype(np.float32) for n in sizes]  # N = 0 is a bad bag among good ones
    with MILClient.from_path(onnx_model, max_instances=budget, max_batch_size=max_batch_size) as client:
        results = client.predict(bags)
        alone = [client.predict([bag])[0] for bag in bags]
    assert [r.index for r in results] == list(range(len(bags)))
    for bag, result, single in zip(bags, results, alone):
        assert result.ok == (len(bag) > 0)
        if result.ok:
            assert result.n_instances == len(bag)
            np.testing.assert_allclose(result.logits, single.logits, atol=1e-5)
            np.testing.assert_allclose(result.attention, single.attention, atol=1e-5)


# -- padding invariance of every registered model ------------------------------------------------------------------
_MODELS: dict[str, torch.nn.Module] = {}


def _model(name: str) -> torch.nn.Module:
    """The registered model in its declared test configuration (built once: hypothesis calls many times)."""
    if name not in _MODELS:
        cls = get_model_class(name)
        torch.manual_seed(0)
        _MODELS[name] = cls(in_shape=(D,), n_classes=cls.test_n_classes[0], **cls.test_config).eval()
    return _MODELS[name]


def _grid(n: int, rng: np.random.Generator) -> np.ndarray:
    side = int(np.ceil(np.sqrt(n))) + 1
    cells = rng.permutation(side * side)[:n]
    return (np.stack([cells // side, cells % side], axis=1) + rng.integers(0, 30, 2)).astype(np.float32)


def _batch(bags: list[dict[str, np.ndarray]], n: int, rng: np.random.Generator | None) -> dict[str, torch.Tensor]:
    """collate_fn's padded batch, widened to ``n`` instances; with ``rng`` the padded features and coords hold
    random garbage (a model must ignore them, not rely on zeros)."""
    batch = collate_fn([{"X": torch.from_numpy(b["X"]), "coords": torch.from_numpy(b["coords"]),
                         "adj": torch.from_numpy(b["adj"])} for b in bags])
    extra = n - batch["X"].shape[1]
    X = torch.nn.functional.pad(batch["X"], (0, 0, 0, extra))
    coords = torch.nn.functional.pad(batch["coords"], (0, 0, 0, extra))
    mask = torch.nn.functional.pad(batch["mask"], (0, extra), value=False)
    adj = torch.nn.functional.pad(batch["adj"], (0, extra, 0, extra))
    if rng is not None:
        pad = ~mask
        X[pad] = torch.from_numpy(rng.standard_normal((int(pad.sum()), D)).astype(np.float32)) * 10
        coords[pad] = torch.from_numpy(rng.integers(0, 1000, (int(pad.sum()), 2)).astype(np.float32))
    return {"X": X, "mask": mask, "coords": coords, "adj": adj}


def _run(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    extras = {key: batch[key] for key in model.extra_inputs}
    with torch.no_grad():
        logits, att = model(batch["X"], mask=batch["mask"], return_att=True, **extras)
    return logits.reshape(logits.shape[0], -1), model.deployment_attention(att, batch["mask"])


@pytest.mark.parametrize("name", list_models())
@settings(max_examples=12, deadline=None)
@given(sizes=st.lists(st.integers(1, 10), min_size=2, max_size=4), position=st.integers(0, 3),
       extra=st.integers(0, 4), seed=st.integers(0, 2**16))
def test_every_model_is_padding_invariant(name, sizes, position, extra, seed):
    model = _model(name)
    rng = np.random.default_rng(seed)
    bags = []
    for n in sizes:
        coords = _grid(n, rng)
        edge_index, edge_weight = coords_graph(coords)
        adj = np.zeros((n, n), np.float32)
        adj[edge_index[0], edge_index[1]] = edge_weight
        bags.append({"X": rng.standard_normal((n, D)).astype(np.float32), "coords": coords, "adj": adj})
    position %= len(bags)
    n = len(bags[position]["X"])
    alone_logits, alone_att = _run(model, _batch([bags[position]], n, None))
    logits, att = _run(model, _batch(bags, max(sizes) + extra, rng))
    torch.testing.assert_close(logits[position], alone_logits[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(att[position, :n], alone_att[0], atol=1e-5, rtol=0)
    assert float(att[position, n:].abs().sum()) == 0.0  # no attention on padding
