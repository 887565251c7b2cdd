import numpy as np
import onnxruntime as ort

from milsdk.bench.overhead import client_overhead, raw_feed
from milsdk.serving import MILClient, pad_batch, plan_batches

from .conftest import D


def test_the_raw_session_gets_the_clients_own_padded_batches(tiny_onnx):
    client = MILClient.from_path(tiny_onnx, max_instances=64, max_batch_size=4)
    rng = np.random.default_rng(0)
    bags = [rng.normal(size=(n, D)).astype(np.float32) for n in (30, 5, 12, 70, 12)]
    feeds = raw_feed(bags, client.info, client.max_instances, client.max_batch_size)
    plan = plan_batches([len(b) for b in bags], 64, 4)
    assert len(feeds) == len(plan.batches)
    for feed, batch in zip(feeds, plan.batches):
        expected = pad_batch([{"features": bags[i]} for i in batch.indices], batch.n_max, ["features", "mask"])
        for key in expected:
            np.testing.assert_array_equal(feed[key], expected[key])


def test_overhead_is_measured_against_the_raw_session_and_the_backend_is_restored(tiny_onnx):
    client = MILClient.from_path(tiny_onnx)
    raw = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    bags = [np.ones((n, D), np.float32) for n in (3, 40)]
    result = client_overhead(client, raw, "2 bags", bags, repeats=3, warmup=1, settle_s=0.01)
    assert result.instances == 43 and len(result.raw_times) == len(result.client_times) == 3
    assert all(t > 0 for t in result.raw_times + result.client_times + result.client_run_times)
    # the time inside backend.run is part of the client's time
    assert all(run <= total for run, total in zip(result.client_run_times, result.client_times))
    assert np.isfinite(result.overhead) and np.isfinite(result.outside_run)
    assert "run" not in vars(client.backend)  # the instrumentation is gone
    assert client.predict(bags)[1].n_instances == 40
