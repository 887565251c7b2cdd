import threading
import time

import numpy as np
import pytest

from milsdk.contract import ModelInfo
from milsdk.errors import ServerUnavailableError, ServingError
from milsdk.serving import MILClient

D = 8


class FakeBackend:
    """A numpy model in the deployment signature: attention = masked softmax(X v), logit = sum_i a_i (X w)_i.

    It records every request's shape, can fail the first ``transient`` calls as a restarting server does, rejects
    any batch holding a bag whose first value is 999 (as a server rejects a bad request), and tracks how many
    requests run at once.
    """

    def __init__(self, info=None, transient=0, max_batch_size=None, delay=0.0, broken_outputs=False):
        self.info = info or ModelInfo(model_name="Fake", feature_dim=D)
        self.max_batch_size = max_batch_size
        rng = np.random.default_rng(1)
        self.w = rng.normal(size=(self.info.feature_dim, self.info.n_classes)).astype(np.float32)
        self.v = rng.normal(size=self.info.feature_dim).astype(np.float32)
        self.transient = transient
        self.delay = delay
        self.broken_outputs = broken_outputs
        self.shapes = []
        self.running = 0
        self.most_running = 0
        self.lock = threading.Lock()
        self.closed = False

    def run(self, inputs):
        with self.lock:
            if self.transient > 0:
                self.transient -= 1
                raise ServerUnavailableError("fake server at http://fake:1: connection refused")
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.shapes.append(inputs["features"].shape)
        try:
            time.sleep(self.delay)
            x, mask = inputs["features"], inputs["mask"]
            if (x[:, 0, 0] == 999).any():
                raise ServingError("fake server: bad request")
            scores = np.where(mask, x @ self.v, -np.inf)
            att = np.exp(scores - scores.max(axis=1, keepdims=True)) * mask
            att /= att.sum(axis=1, keepdims=True)
            logits = np.einsum("bn,bnc->bc", att, x @ self.w).astype(np.float32)
            if self.broken_outputs:
                return {"logits": logits, "attention": np.zeros((0,), np.float32)}
            return {"logits": logits, "attention": att.astype(np.float32)}
        finally:
            with self.lock:
                self.running -= 1

    def close(self):
        self.closed = True


def bags_of(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, D)).astype(np.float32) for n in sizes]


def alone(backend, bag):
    """(logits, attention) of one bag sent alone, unpadded."""
    out = backend.run({"features": bag[None], "mask": np.ones((1, len(bag)), bool)})
    return out["logits"][0], out["attention"][0]


def test_results_come_back_in_input_order_for_lists_and_iterators():
    sizes = [5, 300, 1, 40, 40, 7, 120, 2]
    bags = bags_of(sizes)
    client = MILClient(FakeBackend(), max_instances=256, max_batch_size=3)
    from_list = client.predict(bags)
    from_iter = client.predict(iter(bags))
    for preds in (from_list, from_iter):
        assert [p.index for p in preds] == list(range(len(bags)))
        assert [p.n_instances for p in preds] == sizes
        assert all(p.ok for p in preds)
    reference = FakeBackend()
    for pred, bag in zip(from_iter, bags):
        logits, att = alone(reference, bag)
        np.testing.assert_allclose(pred.logits, logits, atol=1e-5)
        np.testing.assert_allclose(pred.attention, att, atol=1e-6)
        assert pred.attention.sum() == pytest.approx(1.0, abs=1e-5)
    assert client.last_run.requests < len(bags)  # bags were batched


def test_results_do_not_depend_on_batching():
    bags = bags_of([50, 3, 700, 64, 1, 9, 333])
    runs = [
        MILClient(FakeBackend(), max_instances=budget, max_batch_size=size).predict(bags)
        for budget, size in [(1, 1), (64, 2), (4096, 16)]
    ]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)
            np.testing.assert_allclose(a.attention, b.attention, atol=1e-5)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.ones((4, D + 1), np.float32), "dimension 9, model Fake expects 8"),
        (np.full((4, D), np.nan, np.float32), "NaN/inf"),
        (np.concatenate([np.ones((3, D)), [[np.inf] * D]]).astype(np.float32), "NaN/inf"),
        (np.ones((0, D), np.float32), "0 instances"),
        (np.ones((4, D), np.int64), "dtype int64"),
        (np.array([["a"] * D]), "dtype <U1"),
        (np.ones(D, np.float32), "shape (8,)"),
        (np.ones((1, 4, D), np.float32), "shape (1, 4, 8)"),
        ({"features": np.ones((4, D), np.float32), "coords": np.ones((3, 2))}, "coords have shape (3, 2)"),
        ({"feats": np.ones((4, D), np.float32)}, "no 'features' key"),
    ],
)
def test_one_bad_bag_gets_its_own_error_and_the_others_their_results(bad, message):
    good = bags_of([6, 11, 3])
    preds = MILClient(FakeBackend()).predict([good[0], bad, good[1], good[2]])
    assert [p.ok for p in preds] == [True, False, True, True]
    assert message in preds[1].error and "\n" not in preds[1].error
    assert preds[1].logits is None and preds[1].attention is None and preds[1].n_instances == 0
    assert [p.n_instances for p in preds if p.ok] == [6, 11, 3]


def test_dict_bags_keep_their_names_and_float64_is_accepted():
    rng = np.random.default_rng(3)
    bags = [{"name": "slide_a", "features": rng.normal(size=(5, D)), "coords": np.zeros((5, 2), np.int64)},
            {"features": rng.normal(size=(2, D)).astype(np.float16)}]
    preds = MILClient(FakeBackend()).predict(bags)
    assert [p.name for p in preds] == ["slide_a", "1"]
    assert all(p.ok for p in preds)


def test_a_batch_the_backend_rejects_is_retried_bag_by_bag():
    bags = bags_of([4, 4, 4, 4])
    bags[2][0, 0] = 999
    backend = FakeBackend()
    preds = MILClient(backend, max_batch_size=4).predict(bags)
    assert [p.ok for p in preds] == [True, True, False, True]
    assert "bad request" in preds[2].error


def test_transient_failures_are_retried_with_backoff_and_no_bag_is_lost():
    backend = FakeBackend(transient=3)
    client = MILClient(backend, max_batch_size=2, max_in_flight=1, retry_initial_s=0.01)
    started = time.perf_counter()
    preds = client.predict(bags_of([3, 4, 5, 6, 7]))
    assert all(p.ok for p in preds) and len(preds) == 5
    assert client.last_run.retries == 3
    assert time.perf_counter() - started >= 0.01 + 0.02 + 0.04  # the backoff doubled


def test_a_server_that_stays_down_raises_after_the_deadline():
    client = MILClient(FakeBackend(transient=10**9), retry_deadline_s=0.3, retry_initial_s=0.05)
    started = time.perf_counter()
    with pytest.raises(ServerUnavailableError, match="gave up after retrying for 0.3 s"):
        client.predict(bags_of([3, 4]))
    assert time.perf_counter() - started < 3


def test_models_that_are_not_padding_invariant_get_one_unpadded_bag_per_request():
    info = ModelInfo(model_name="Fake", feature_dim=D, padding_invariant=False)
    backend = FakeBackend(info=info)
    sizes = [5, 9, 2, 9]
    preds = MILClient(backend, max_batch_size=16).predict(bags_of(sizes))
    assert all(p.ok for p in preds)
    assert sorted(backend.shapes) == sorted((1, n, D) for n in sizes)


def test_batch_size_is_capped_by_the_backend_and_requests_overlap():
    backend = FakeBackend(max_batch_size=2, delay=0.05)
    client = MILClient(backend, max_batch_size=16, max_in_flight=3)
    assert client.max_batch_size == 2
    client.predict(bags_of([4] * 12))
    assert max(shape[0] for shape in backend.shapes) == 2
    assert 1 < backend.most_running <= 3


def test_wrong_output_shapes_become_per_bag_errors():
    preds = MILClient(FakeBackend(broken_outputs=True)).predict(bags_of([3, 2]))
    assert not any(p.ok for p in preds)
    assert "expected (1, 1) and (1, 3)" in preds[0].error


def test_metadata_sets_probabilities_labels_and_names():
    binary = ModelInfo(model_name="Fake", feature_dim=D, threshold=0.9, class_names=["benign", "tumor"])
    backend = FakeBackend(info=binary)
    pred = MILClient(backend).predict(bags_of([6]))[0]
    p = 1 / (1 + np.exp(-pred.logits[0]))
    assert pred.probabilities.shape == (1,) and pred.probabilities[0] == pytest.approx(p, rel=1e-6)
    assert pred.label == int(p >= 0.9)
    assert pred.label_name == ["benign", "tumor"][pred.label]

    multi = ModelInfo(model_name="Fake", feature_dim=D, n_classes=3, output_activation="softmax",
                      class_names=["a", "b", "c"])
    pred = MILClient(FakeBackend(info=multi)).predict(bags_of([6]))[0]
    assert pred.probabilities.shape == (3,) and pred.probabilities.sum() == pytest.approx(1.0, abs=1e-6)
    assert pred.label == int(np.argmax(pred.logits)) and pred.label_name == "abc"[pred.label]


def test_an_iterator_is_read_ahead_only_by_a_bounded_window():
    consumed = 0

    def stream():
        nonlocal consumed
        for bag in bags_of([10] * 1000):
            consumed += 1
            yield bag

    client = MILClient(FakeBackend(), max_instances=10, max_in_flight=1)
    first = next(client.predict_iter(stream()))
    assert first.index == 0 and first.ok
    assert consumed < 50


def test_a_single_array_is_refused_with_a_hint():
    with pytest.raises(TypeError, match=r"predict\(\[bag\]\)"):
        MILClient(FakeBackend()).predict(np.ones((3, D), np.float32))


def test_progress_bar_and_close(capsys):
    backend = FakeBackend()
    with MILClient(backend) as client:
        client.predict(bags_of([3, 4, 5]), progress=True)
        assert "3/3" in capsys.readouterr().err
        assert len(client.predict(bags_of([3, 4]))) == 2 and capsys.readouterr().err == ""  # no bar asked for
    assert backend.closed


def test_onnx_model_matches_eager_whatever_the_batch(abmil_onnx, eager, make_bags):
    bags = make_bags([1, 2, 17, 300, 64, 5, 1000, 3])
    client = MILClient.from_path(abmil_onnx, max_instances=2048, max_batch_size=4)
    batched = client.predict(bags)
    one_by_one = MILClient.from_path(abmil_onnx, max_batch_size=1).predict(bags)
    for pred, single, bag in zip(batched, one_by_one, bags):
        logits, attention = eager(bag)
        np.testing.assert_allclose(pred.logits, logits, atol=1e-5)
        np.testing.assert_allclose(pred.attention, attention, atol=1e-5)
        np.testing.assert_allclose(pred.logits, single.logits, atol=1e-5)
        np.testing.assert_allclose(pred.attention, single.attention, atol=1e-5)
    assert client.last_run.padded_fraction > 0  # the bags really were padded together


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_single_bad_value_anywhere_is_found(value):
    rng = np.random.default_rng(3)
    for where in [(0, 0), (17, 5), (39, D - 1)]:
        bag = rng.normal(size=(40, D)).astype(np.float32)
        bag[where] = value
        pred = MILClient(FakeBackend()).predict([bag])[0]
        assert pred.error == "features hold 1 NaN/inf values"


def test_finite_values_whose_sum_overflows_float32_are_accepted():
    # 40 x 8 values of 3e38: their float32 sum is inf, yet every value is finite and the bag is good
    big = np.full((40, D), 3e38, np.float32)
    assert not np.isfinite(big.sum())
    preds = MILClient(FakeBackend()).predict([big, np.ones((3, D), np.float32)])
    assert preds[0].error is None or "NaN/inf" not in preds[0].error
    assert preds[1].ok


def test_all_finite_agrees_with_numpy():
    from milsdk.serving.client import all_finite

    rng = np.random.default_rng(4)
    for dtype in (np.float32, np.float64, np.float16):
        bag = rng.normal(size=(33, 7)).astype(dtype)
        assert all_finite(bag)
        bag[5, 3] = np.nan
        assert not all_finite(bag)
    assert all_finite(np.full((4, 4), np.finfo(np.float32).max, np.float32))
    assert not all_finite(np.array([[np.inf, -np.inf]], np.float32))


def test_a_float32_bag_that_goes_alone_reaches_the_backend_uncopied():
    class Recording(FakeBackend):
        def run(self, inputs):
            self.last = inputs
            return super().run(inputs)

    backend = Recording()
    bag = np.random.default_rng(5).normal(size=(50, D)).astype(np.float32)
    pred = MILClient(backend, max_instances=10, max_in_flight=1).predict([bag])[0]
    assert pred.ok and pred.n_instances == 50
    assert np.shares_memory(backend.last["features"], bag)  # no copy of a large bag on its way in


def test_one_request_in_flight_runs_in_the_calling_thread():
    class Where(FakeBackend):
        threads = set()

        def run(self, inputs):
            self.threads.add(threading.get_ident())
            return super().run(inputs)

    backend = Where()
    preds = MILClient(backend, max_batch_size=1, max_in_flight=1).predict(bags_of([3, 5, 7]))
    assert all(p.ok for p in preds) and len(backend.shapes) == 3
    assert backend.threads == {threading.get_ident()}
    # and a failure still reaches the caller as it does with a pool
    down = MILClient(FakeBackend(transient=10**9), max_in_flight=1, retry_deadline_s=0.1, retry_initial_s=0.05)
    with pytest.raises(ServerUnavailableError, match="gave up"):
        down.predict(bags_of([3]))


def test_parallel_requests_run_on_worker_threads_the_client_keeps_until_close():
    """Requests in parallel run on the client's own worker threads, the same ones from one predict to the next
    (a backend's per-thread connection is reused: Triton's client and shared-memory region); close stops them.
    Each predict used to start and stop a pool of its own."""
    class Where(FakeBackend):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.threads = set()

        def run(self, inputs):
            with self.lock:
                self.threads.add(threading.current_thread())  # thread objects: an ident can be reused
            return super().run(inputs)

    backend = Where(delay=0.01)
    client = MILClient(backend, max_batch_size=1, max_in_flight=2)
    for _ in range(5):
        assert all(p.ok for p in client.predict(bags_of([3, 5, 7, 9])))
    stream = client.predict_iter(bags_of([3, 5, 7, 9, 11, 13]))
    assert next(stream).ok
    stream.close()  # abandoned early: its requests are cancelled or waited for, the workers stay
    assert all(p.ok for p in client.predict(bags_of([4, 6])))
    assert 1 <= len(backend.threads) <= 2 and threading.current_thread() not in backend.threads
    assert all(t.is_alive() for t in backend.threads)
    client.close()
    assert not any(t.is_alive() for t in backend.threads) and backend.closed


def test_without_the_scan_a_bad_bag_is_still_named_by_its_outputs():
    bad = np.ones((4, D), np.float32)
    bad[2, 3] = np.nan
    good = bags_of([6, 11])
    preds = MILClient(FakeBackend(), check_finite=False).predict([good[0], bad, good[1]])
    assert [p.ok for p in preds] == [True, False, True]
    assert preds[1].error == "features hold 1 NaN/inf values"
    scanned = MILClient(FakeBackend()).predict([good[0], bad, good[1]])
    for a, b in zip(preds, scanned):  # the same results and the same error as with the scan
        assert a.error == b.error
        if a.ok:
            np.testing.assert_array_equal(a.attention, b.attention)


def test_the_triton_client_caps_padding_and_the_cap_reaches_the_planner():
    import inspect

    assert inspect.signature(MILClient.from_triton).parameters["max_padding"].default == 0.03
    backend = FakeBackend()
    sizes = [100, 99, 98, 60, 59, 10]
    preds = MILClient(backend, max_instances=1000, max_batch_size=8, max_padding=0.05).predict(bags_of(sizes))
    assert all(p.ok for p in preds)
    assert sorted(backend.shapes) == sorted([(3, 100, D), (2, 60, D), (1, 10, D)])
    with pytest.raises(ValueError, match="max_padding"):
        MILClient(FakeBackend(), max_padding=-0.1)
