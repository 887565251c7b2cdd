"""Client overhead: ``MILClient.predict`` against a default ``onnxruntime.InferenceSession`` running the same
padded batches, in one process, timed alternately (so both see the same machine load).

The raw session is given the batches the client's planner makes (:func:`~milsdk.serving.planner.plan_batches`
with the client's own budget, padded by :func:`~milsdk.serving.planner.pad_batch`, graphs built as the client
builds them), ready before the clock starts: it measures what the runtime alone costs, and the client's extra time
is everything else it does per bag (checks, planning, padding, hand-off, results). The time the client spends
inside ``backend.run`` is recorded too, so the overhead is also given as client time minus runtime time, which
machine load hardly disturbs. Needs numpy and onnxruntime only (no torch).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["OverheadResult", "client_overhead", "raw_feed"]


@dataclass(frozen=True)
class OverheadResult:
    """One bag set's timings: seconds of each timed repeat.

    Attributes:
        label: what was run (e.g. "1 bag x 16000").
        instances: real instances in the bags.
        raw_times: the default onnxruntime session on the client's padded batches.
        client_times: ``MILClient.predict`` on the bags.
        client_run_times: of each ``client_times`` entry, the time spent inside the backend's ``run``.
    """

    label: str
    instances: int
    raw_times: tuple[float, ...]
    client_times: tuple[float, ...]
    client_run_times: tuple[float, ...]

    @property
    def raw_s(self) -> float:
        return float(np.median(self.raw_times))

    @property
    def client_s(self) -> float:
        return float(np.median(self.client_times))

    @property
    def overhead(self) -> float:
        """median client / median raw - 1 (0.05 = the client takes 5% longer)."""
        return self.client_s / self.raw_s - 1.0

    @property
    def overhead_best(self) -> float:
        """fastest client / fastest raw - 1: the least disturbed call of each, steadier on a loaded machine."""
        return min(self.client_times) / min(self.raw_times) - 1.0

    @property
    def outside_run(self) -> float:
        """median (client - time inside backend.run) / median raw: the client's own work against the runtime's."""
        own = np.asarray(self.client_times) - np.asarray(self.client_run_times)
        return float(np.median(own)) / self.raw_s


def raw_feed(bags: Sequence[Any], info: Any, max_instances: int, max_batch_size: int) -> list[dict[str, np.ndarray]]:
    """The padded batches the client sends for ``bags`` (arrays (N_i, D) or dicts with ``features`` and
    ``coords``), built as the client builds them: its planner, its padding, its graph for a graph model."""
    from milsdk.contract import COORDS, EDGE_INDEX, EDGE_WEIGHT, FEATURES
    from milsdk.serving import pad_batch, plan_batches
    from milsdk.utils.graph import coords_graph

    prepared = []
    for bag in bags:
        bag = dict(bag) if isinstance(bag, Mapping) else {FEATURES: bag}
        item = {FEATURES: np.ascontiguousarray(bag[FEATURES], dtype=np.float32)}
        if bag.get(COORDS) is not None:
            item[COORDS] = np.ascontiguousarray(bag[COORDS], dtype=np.float32)
        if EDGE_INDEX in info.inputs:
            item[EDGE_INDEX], item[EDGE_WEIGHT] = coords_graph(item[COORDS])
        prepared.append(item)
    plan = plan_batches([len(b[FEATURES]) for b in prepared], max_instances, max_batch_size,
                        pad=info.padding_invariant)
    return [
        pad_batch([prepared[i] for i in batch.indices], batch.n_max, info.inputs) for batch in plan.batches
    ]


def client_overhead(
    client: Any, raw_session: Any, label: str, bags: Sequence[Any], repeats: int = 5, warmup: int = 2,
    settle_s: float = 0.25,
) -> OverheadResult:
    """Time ``client.predict(bags)`` against ``raw_session`` on the same padded batches, alternately.

    Args:
        client: a :class:`~milsdk.serving.MILClient` on an onnxruntime backend.
        raw_session: an ``onnxruntime.InferenceSession`` on the same file (default options: the reference).
        label: names the bag set in the result.
        bags: the bags, as the client takes them.
        repeats: timed runs of each, after ``warmup`` untimed ones.
        settle_s: idle time after each timed call. onnxruntime's default pool spins on after a run; without a
            long enough pause the raw session's spinning threads take a core from the client's next call. The
            spinning lasts longer than it seems: a default session's worker burned 60-80 ms of CPU in the 100 ms
            after a run on a 2-core AMD Zen 3, and with a 50 ms pause the client's runs of a 4,000-instance ABMIL
            bag took 23.7 ms against the raw session's 14.9 (16.3 with 0.2 s: the pause, not the client).
    """
    from milsdk.contract import ATTENTION, LOGITS

    feeds = raw_feed(bags, client.info, client.max_instances, client.max_batch_size)
    backend = client.backend
    backend_run = backend.run
    inside = [0.0]

    def timed_run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        try:
            return backend_run(inputs)
        finally:
            inside[0] += time.perf_counter() - start

    backend.run = timed_run  # instrumented for this measurement only
    raw_times, client_times, run_times = [], [], []
    try:
        for r in range(warmup + repeats):
            start = time.perf_counter()
            for feed in feeds:
                raw_session.run([LOGITS, ATTENTION], feed)
            raw_s = time.perf_counter() - start
            time.sleep(settle_s)  # a default session's threads spin on after its run: not into the client's call
            inside[0] = 0.0
            start = time.perf_counter()
            predictions = client.predict(bags)
            client_s = time.perf_counter() - start
            time.sleep(settle_s)
            failed = [p.error for p in predictions if not p.ok]
            if failed:
                raise RuntimeError(f"the client failed on {label}: {failed[0]}")
            if r >= warmup:
                raw_times.append(raw_s)
                client_times.append(client_s)
                run_times.append(inside[0])
    finally:
        del backend.run
    n = sum(len(b["features"]) if isinstance(b, Mapping) else len(b) for b in bags)
    return OverheadResult(label, n, tuple(raw_times), tuple(client_times), tuple(run_times))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m milsdk.bench.overhead model.onnx 16000 100000``: one bag of each size, the figures printed."""
    import argparse

    import onnxruntime as ort

    from milsdk.serving import MILClient

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("model")
    parser.add_argument("sizes", nargs="+", type=int)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-check", action="store_true", help="MILClient(check_finite=False)")
    args = parser.parse_args(argv)
    client = MILClient.from_path(args.model, **({"check_finite": False} if args.no_check else {}))
    raw = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for n in args.sizes:
        bag = rng.standard_normal((n, client.info.feature_dim), dtype=np.float32)
        res = client_overhead(client, raw, f"1 bag x {n}", [bag], repeats=args.repeats)
        print(f"{res.label:16s} raw {res.raw_s * 1e3:7.1f} ms  client {res.client_s * 1e3:7.1f} ms  "
              f"overhead {100 * res.overhead:+5.1f}% (fastest calls {100 * res.overhead_best:+5.1f}%)  "
              f"outside run {100 * res.outside_run:+5.1f}%  "
              f"({res.instances / res.client_s / 1e6:.3f} M inst/s)", flush=True)
    client.close()


if __name__ == "__main__":
    main()
