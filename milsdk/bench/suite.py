"""The benchmark suite: every path a user can run a MIL model on, side by side, in one run.

For each model (default: every registered one) and bag size it measures eager milsdk, eager torchmil 1.0.2 (the
reference a user would otherwise run), TorchScript and onnxruntime through :class:`~milsdk.serving.MILClient`, a
raw default onnxruntime session on the same padded batches, int8 ONNX (uint8 weights; int8 weights where this CPU
has VNNI / AMX) and bfloat16 TorchScript (where it has AMX / AVX-512 BF16) through the client, each with an
accuracy report against eager float32, and with ``triton=True`` Triton HTTP, gRPC and HTTP +
shared memory through the client (a real server, Python backend), HTTP and shared memory also with the float16 wire
format (the model exported with float16 features, as the ``triton-python-wire16`` profile does). Each measurement
is the median (p50) and p99 of ``repeats`` timed calls after ``warmup`` untimed ones, one bag per call;
instances/s = N / p50. The paths of one size are timed in turns, one turn each per round (an untimed call, then
the timed one) in an order that rotates (``_Runner.measure_together``), so that their ratios hold under a
machine's changing load; the Triton paths' rounds include the in-process client again
(:data:`~milsdk.bench.workload.IN_PROCESS_BESIDE_TRITON`), the base of their share of in-process. The raw session
is timed only against the client, alternately with a pause (:mod:`milsdk.bench.overhead`): a default session's
pool spins after its run. The FLOPs of the model's matrix products are counted once per size
(:func:`~milsdk.bench.workload.count_flops`), so every path's GFLOP/s can be read against the machine's GEMM
ceiling (:mod:`milsdk.bench.ceilings`) measured in the same run.
Peak RSS of one bag is measured in a fresh process per path (:mod:`milsdk.bench.rss`), the planner's padding on
512 log-normal bag sizes, and the client's overhead over the raw session (:mod:`milsdk.bench.overhead`).

A size is skipped for a path when its estimated time (from the path's two previous sizes) exceeds
``max_seconds`` per measurement; the report lists every skip. Results go to ``results.json``, ``RESULTS.md`` and
``throughput.png`` in ``out_dir``. Timings are what this machine did under its load at the time (the report
records the load average); they are never asserted anywhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from milsdk.bench.ceilings import gemm_ceilings, loopback_bandwidth, memory_bandwidth
from milsdk.bench.machine import machine_info
from milsdk.bench.overhead import client_overhead
from milsdk.bench.workload import (
    IN_PROCESS_BESIDE_TRITON, REDUCED_PATHS, PreparedModel, count_flops, make_bag, model_inputs, prepare_model,
)

__all__ = ["SuiteConfig", "quick_config", "run_suite", "PATHS", "DEFAULT_SIZES", "FLOAT16_WIRE_PATHS"]

log = logging.getLogger(__name__)

DEFAULT_SIZES = (1_000, 4_000, 16_000, 64_000, 100_000)
#: the measured paths, in report order.
PATHS = (
    "eager milsdk", "eager torchmil", "TorchScript (MILClient)", "onnxruntime (MILClient)",
    "onnxruntime raw session", "onnxruntime int8 (MILClient)", *REDUCED_PATHS, "Triton HTTP (MILClient)",
    "Triton gRPC (MILClient)", "Triton HTTP+shm (MILClient)", "Triton HTTP float16 wire (MILClient)",
    "Triton HTTP+shm float16 wire (MILClient)", IN_PROCESS_BESIDE_TRITON,
)
#: Triton paths whose features travel as float16 (the triton-python-wire16 profile's export)
FLOAT16_WIRE_PATHS = ("Triton HTTP float16 wire (MILClient)", "Triton HTTP+shm float16 wire (MILClient)")
QUICK_MODELS = ("ABMIL", "TransMIL")


@dataclass
class SuiteConfig:
    """What to run.

    Attributes:
        out_dir: where results.json, RESULTS.md and throughput.png go.
        models: registered model names (None = :func:`milsdk.models.list_models`).
        sizes: bag sizes N.
        dim: D, the feature dimension.
        repeats / warmup: timed and untimed calls per measurement.
        max_seconds: a measurement estimated to take longer is skipped (and reported).
        triton: measure Triton HTTP / gRPC / shared memory too (starts a real server).
        rss: measure peak RSS in fresh processes at ``rss_size``.
        rss_size: bag size of the peak-RSS measurements (None = the largest size).
        gemm_shapes: (m, k, n) of the ceiling GEMMs.
        bandwidth_bytes: size of the copy that measures memory bandwidth.
        planner_bags: how many log-normal bag sizes the padding measurement plans.
        settle_s: the client-overhead measurement's pause after each call, so that a default session's
            spinning threads are done before the other side runs (:func:`~milsdk.bench.overhead.client_overhead`).
        quick: a smoke run (tiny sizes); the report says so.
    """

    out_dir: Path
    models: Sequence[str] | None = None
    sizes: Sequence[int] = DEFAULT_SIZES
    dim: int = 1024
    repeats: int = 5
    warmup: int = 1
    max_seconds: float = 30.0
    triton: bool = False
    rss: bool = True
    rss_size: int | None = None
    gemm_shapes: Sequence[tuple[int, int, int]] = ((16_000, 1024, 128), (4096, 4096, 4096))
    bandwidth_bytes: int = 512 << 20
    planner_bags: int = 512
    settle_s: float = 0.25
    quick: bool = False
    seed: int = 0
    command: str = ""


def quick_config(out_dir: Path, **overrides: Any) -> SuiteConfig:
    """A smoke run of seconds: ABMIL and TransMIL in their declared test configurations at D = 64, bags of 64 and
    256 instances, small ceilings, peak RSS of the onnxruntime path only."""
    settings = dict(
        out_dir=out_dir, models=QUICK_MODELS, sizes=(64, 256), dim=64, repeats=3, warmup=1, max_seconds=10.0,
        gemm_shapes=((2048, 64, 128), (256, 256, 256)), bandwidth_bytes=16 << 20, planner_bags=512, settle_s=0.02,
        quick=True,
    )
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return SuiteConfig(**settings)


# -- measuring -----------------------------------------------------------------------------------------------
@dataclass
class Measurement:
    """One (model, path, size): seconds of each timed call, or why it was not measured."""

    model: str
    path: str
    n: int
    times: list[float] = field(default_factory=list)
    flops: int = 0
    skipped: str = ""

    @property
    def p50(self) -> float:
        return float(np.median(self.times))

    @property
    def p99(self) -> float:
        return float(np.percentile(self.times, 99))

    @property
    def instances_per_s(self) -> float:
        return self.n / self.p50

    @property
    def gflops(self) -> float:
        return self.flops / self.p50 / 1e9


def _estimate(previous: list[Measurement], n: int) -> float | None:
    """Seconds one call at size n should take, from the path's measured sizes: the growth exponent between the
    last two (clamped to [1, 2]; 1.2 with one), applied to the last. Fastest calls, not medians: on a loaded
    machine one disturbed measurement would otherwise skip every larger size."""
    done = [m for m in previous if m.times]
    if not done:
        return None
    last = done[-1]
    exponent = 1.2
    if len(done) >= 2 and done[-2].n != last.n:
        ratio = max(min(last.times), 1e-9) / max(min(done[-2].times), 1e-9)
        exponent = min(2.0, max(1.0, math.log(ratio) / math.log(last.n / done[-2].n)))
    return min(last.times) * (n / last.n) ** exponent


class _Runner:
    """Measures one model's paths size by size, skipping what would take too long.

    The paths of one size are timed in turns (:meth:`measure_together`): each round gives every path a turn, in
    an order that rotates from round to round, so that a slow spell of a shared machine (this project's VMs move
    by 20-30% within minutes) falls on every path alike instead of on whichever path was being timed then. A turn
    is two calls and only the second is timed: the first call after another path's pays for the switch (caches
    the other path filled, the other runtime's threads going to sleep and this one's waking): ABMIL bfloat16 at
    16,000 instances took 18 ms on its first call after an onnxruntime path and 12 ms on the next.
    """

    def __init__(self, config: SuiteConfig, results: list[Measurement]) -> None:
        self.config = config
        self.results = results

    def measure(self, model: str, path: str, n: int, flops: int, fn: Callable[[], Any] | None,
                skipped: str = "") -> Measurement | None:
        """One path alone (see :meth:`measure_together`)."""
        return self.measure_together(model, n, [(path, flops, fn, skipped)])[0]

    def measure_together(
        self, model: str, n: int, paths: Sequence[tuple[str, int, Callable[[], Any] | None, str]]
    ) -> list[Measurement]:
        """Time ``paths`` ((path, flops, fn, skipped) each) in turns at size ``n``: ``warmup`` untimed rounds,
        then ``repeats`` rounds of an untimed and a timed call per path; a path estimated to take more than
        ``max_seconds`` is skipped, one that fails leaves the rounds with its error as the reason."""
        rows, calls = [], []
        for path, flops, fn, skipped in paths:
            row = Measurement(model, path, n, flops=flops, skipped=skipped)
            if not skipped and fn is not None:
                estimate = _estimate([m for m in self.results if m.model == model and m.path == path], n)
                total = None if estimate is None else estimate * (2 * self.config.repeats + self.config.warmup)
                if total is not None and total > self.config.max_seconds:
                    row.skipped = f"estimated {total:.0f} s > max {self.config.max_seconds:g} s"
                else:
                    calls.append((row, fn))
            rows.append(row)
        for round_index in range(self.config.warmup + self.config.repeats):
            timed = round_index >= self.config.warmup
            shift = round_index % max(len(calls), 1)
            for row, fn in calls[shift:] + calls[:shift]:
                for call in range(2 if timed else 1):
                    if row.skipped:
                        break
                    start = time.perf_counter()
                    try:
                        fn()
                    except Exception as exc:  # noqa: BLE001 - a path that fails at a size is a row, not the end
                        row.skipped, row.times = f"failed: {str(exc).splitlines()[0][:200]}", []
                        break
                    if timed and call == 1:
                        row.times.append(time.perf_counter() - start)
        for row in rows:
            self.results.append(row)
            log.info("%s %s N=%d: %s", model, row.path, n, row.skipped or f"{row.p50 * 1e3:.1f} ms")
        return rows


def _ok(predictions: list[Any]) -> None:
    bad = [p.error for p in predictions if not p.ok]
    if bad:
        raise RuntimeError(bad[0])


def _measure_model(prepared: PreparedModel, config: SuiteConfig, runner: _Runner,
                   overhead_rows: list[dict[str, Any]]) -> None:
    import onnxruntime as ort
    import torch

    from milsdk.export import DeploymentModule
    from milsdk.serving import MILClient

    name = prepared.name
    module = DeploymentModule(prepared.model)
    onnx_client = MILClient.from_path(prepared.onnx_path) if prepared.onnx_path else None
    raw = ort.InferenceSession(str(prepared.onnx_path), providers=["CPUExecutionProvider"]) if onnx_client else None
    ts_client = MILClient.from_path(prepared.torchscript_path) if prepared.torchscript_path else None
    int8_client = MILClient.from_path(prepared.int8_path) if prepared.int8_path else None
    reduced = {path: MILClient.from_path(artifact) for path, artifact in prepared.reduced_paths.items()}
    info = onnx_client.info if onnx_client else None
    inputs_of = info.inputs if info else list(module.input_names)
    try:
        for n in config.sizes:
            bag = make_bag(n, config.dim, seed=config.seed)
            arrays = model_inputs(bag, inputs_of)
            tensors = [torch.from_numpy(arrays[k]) for k in module.input_names]

            def eager() -> Any:
                with torch.inference_mode():
                    return module(*tensors)

            flops = count_flops(eager)
            together: list[tuple[str, int, Callable[[], Any] | None, str]] = [("eager milsdk", flops, eager, "")]
            if prepared.torchmil_model is not None:
                x = torch.from_numpy(bag["features"])[None]
                reference = prepared.torchmil_model
                kwargs = {"mask": None} if "mask" in prepared.torchmil_call else {}

                def torchmil_eager() -> Any:
                    with torch.inference_mode():
                        return reference(x, **kwargs)

                together.append(("eager torchmil", flops, torchmil_eager, ""))
            else:
                together.append(("eager torchmil", flops, None, "no torchmil model (see notes)"))
            client_bag = [{"features": bag["features"], "coords": bag["coords"]}]
            clients = {"TorchScript (MILClient)": ts_client, "onnxruntime (MILClient)": onnx_client,
                       "onnxruntime int8 (MILClient)": int8_client, **reduced}
            together += [(path, flops, lambda c=client: _ok(c.predict(client_bag)), "")
                         for path, client in clients.items() if client is not None]
            # every path in turns; the raw session only in the overhead measurement (its pool spins after a
            # run, which would slow the next path of a round)
            runner.measure_together(name, n, together)
            if onnx_client is None:
                continue
            estimates = [m for m in runner.results if m.model == name and m.path == "onnxruntime raw session"]
            estimate = _estimate(estimates, n)
            pair_seconds = None if estimate is None else 2 * estimate * (config.repeats + config.warmup)
            if pair_seconds is not None and pair_seconds > config.max_seconds:
                runner.measure(name, "onnxruntime raw session", n, flops, None,
                               skipped=f"estimated {pair_seconds:.0f} s > max {config.max_seconds:g} s")
                continue
            try:
                result = client_overhead(onnx_client, raw, f"1 bag x {n}", client_bag, config.repeats, config.warmup,
                                         config.settle_s)
            except Exception as exc:  # noqa: BLE001 - reported
                runner.measure(name, "onnxruntime raw session", n, flops, None,
                               skipped=f"failed: {str(exc).splitlines()[0][:200]}")
                continue
            runner.results.append(Measurement(name, "onnxruntime raw session", n, list(result.raw_times), flops))
            overhead_rows.append(_overhead_row(name, result))
    finally:
        for client in (onnx_client, ts_client, int8_client, *reduced.values()):
            if client is not None:
                client.close()


def _overhead_row(model: str, result: Any) -> dict[str, Any]:
    return {
        "model": model, "bags": result.label, "instances": result.instances, "raw_s": result.raw_s,
        "client_s": result.client_s, "overhead": result.overhead, "overhead_best": result.overhead_best,
        "outside_run": result.outside_run,
    }


def _lognormal_sizes(count: int, median: float, sigma: float, seed: int, cap: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(np.exp(rng.normal(np.log(median), sigma, size=count))), 1, cap).astype(int)


def planner_padding(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Padded-slot fraction of :func:`~milsdk.serving.plan_batches` on ``count`` log-normal bag sizes (median
    3,000, sigma 0.75: slides of a pathology cohort) with the in-process and the Triton client defaults."""
    from milsdk.serving import plan_batches
    from milsdk.serving.client import IN_PROCESS_MAX_INSTANCES

    sizes = _lognormal_sizes(count, 3000, 0.75, seed)
    rows = []
    for label, budget, batch, cap in (
        ("in-process defaults (from_path)", IN_PROCESS_MAX_INSTANCES, 16, 1.0),
        ("Triton defaults (from_triton, max_batch_size 8, max_padding 0.03)", 32768, 8, 0.03),
        ("Triton budget without the padding cap (the previous default)", 32768, 8, 1.0),
    ):
        plan = plan_batches(sizes.tolist(), budget, batch, max_padding=cap)
        rows.append({"setting": label, "max_instances": budget, "max_batch_size": batch, "max_padding": cap,
                     "bags": count, "requests": len(plan.batches), "padded_fraction": plan.padded_fraction})
    return rows


def _triton_phase(prepared: list[PreparedModel], config: SuiteConfig, runner: _Runner, root: Path) -> list[str]:
    from milsdk.export import export_onnx, read_model_info, write_triton_model
    from milsdk.serving import MILClient, TritonServer

    notes = []
    repo = root / "model_repository"
    served: dict[str, str] = {}
    wire16: dict[str, str] = {}  # the same model exported with float16 features (the triton-python-wire16 profile)
    for p in prepared:
        if p.onnx_path is None:
            continue
        served[p.name] = p.name.lower()
        write_triton_model(repo, p.name.lower(), {"onnx": p.onnx_path}, read_model_info(p.onnx_path),
                           backend="python")
        try:
            half = export_onnx(p.model, root / f"{p.name}_wire16.onnx", features_dtype="float16")
        except Exception as exc:  # noqa: BLE001 - a model that cannot take float16 features is a note
            notes.append(f"{p.name}: float16-features export failed: {str(exc).splitlines()[0]}")
            continue
        wire16[p.name] = f"{p.name.lower()}_wire16"
        write_triton_model(repo, wire16[p.name], {"onnx": half}, read_model_info(half), backend="python",
                           features_dtype="float16")
    if not served:
        return ["no model exported to ONNX: Triton not measured"]
    onnx_paths = {p.name: p.onnx_path for p in prepared}
    with TritonServer(repo, exit_timeout_s=2) as server:
        for name, served_name in served.items():
            with contextlib.ExitStack() as stack:
                # the in-process client in the same rounds: each Triton path's share of in-process is measured
                # under the same load (IN_PROCESS_BESIDE_TRITON)
                clients = {IN_PROCESS_BESIDE_TRITON: stack.enter_context(MILClient.from_path(onnx_paths[name]))}
                for path, url, protocol, shm, model_name in (
                    ("Triton HTTP (MILClient)", server.http_url, "http", False, served_name),
                    ("Triton gRPC (MILClient)", server.grpc_url, "grpc", False, served_name),
                    ("Triton HTTP+shm (MILClient)", server.http_url, "http", True, served_name),
                    (FLOAT16_WIRE_PATHS[0], server.http_url, "http", False, wire16.get(name)),
                    (FLOAT16_WIRE_PATHS[1], server.http_url, "http", True, wire16.get(name)),
                ):
                    if model_name is not None:
                        clients[path] = stack.enter_context(
                            MILClient.from_triton(url, model_name, protocol=protocol, shared_memory=shm))
                for n in config.sizes:
                    flops = next((m.flops for m in runner.results if m.model == name and m.n == n), 0)
                    bag = make_bag(n, config.dim, seed=config.seed)
                    client_bag = [{"features": bag["features"], "coords": bag["coords"]}]
                    runner.measure_together(name, n, [
                        (path, flops, lambda c=client: _ok(c.predict(client_bag)), "")
                        for path, client in clients.items()
                    ])
    return notes


def run_suite(config: SuiteConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the suite (see the module docstring) and write its files.

    Returns:
        The results (what ``results.json`` holds).
    """
    from milsdk.bench.report import write_plot, write_report
    from milsdk.bench.rss import peak_rss
    from milsdk.models import list_models

    from milsdk.errors import ModelConfigError

    started = time.time()
    out_dir = Path(config.out_dir)
    models = list(config.models) if config.models else list_models()
    unknown = [m for m in models if m not in list_models()]
    if unknown:
        raise ModelConfigError(f"unknown models {', '.join(unknown)}; registered: {', '.join(list_models())}")
    if not config.sizes or min(config.sizes) < 1:
        raise ValueError(f"bag sizes must be >= 1, got {list(config.sizes)}")
    sizes = sorted({int(n) for n in config.sizes})
    config.sizes = sizes
    results: dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v)
                                          for k, v in asdict(config).items()},
                               "machine": machine_info(), "notes": {},
                               "not_run": [m for m in list_models() if m not in models]}
    echo(f"machine: {results['machine']['cpu']}, load average {results['machine']['load_average']}")
    echo("ceilings: float32 GEMM per runtime, memory bandwidth")
    results["gemm"] = [dict(asdict(g), gflops=g.gflops, shape=g.shape)
                       for g in gemm_ceilings(config.gemm_shapes, repeats=max(3, config.repeats))]
    results["bandwidth_gbs"] = memory_bandwidth(config.bandwidth_bytes)
    for g in results["gemm"]:
        echo(f"  {g['runtime']:12s} {g['shape']:24s} {g['gflops']:7.1f} GFLOP/s")
    echo(f"  copy bandwidth {results['bandwidth_gbs']:.1f} GB/s")
    results["planner"] = planner_padding(config.planner_bags, config.seed)
    measurements: list[Measurement] = []
    overhead_rows: list[dict[str, Any]] = []
    runner = _Runner(config, measurements)
    prepared_models: list[PreparedModel] = []
    rss_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="milsdk-bench-") as tmp:
        root = Path(tmp)
        for name in models:
            echo(f"{name}: export, then {len(sizes)} sizes")
            try:
                prepared = prepare_model(name, config.dim, root / name, seed=config.seed, small=config.quick)
            except Exception as exc:  # noqa: BLE001 - a model that cannot be built is reported, the rest run
                results["notes"][name] = [f"not measured: {str(exc).splitlines()[0]}"]
                continue
            prepared_models.append(prepared)
            results["notes"][name] = list(prepared.notes) + (
                ["eager torchmil holds the same weights (milsdk.models.from_torchmil)"] if prepared.same_weights
                else []
            )
            _measure_model(prepared, config, runner, overhead_rows)
            artifacts = {"onnxruntime int8 (MILClient)": prepared.int8_path} | prepared.reduced_paths
            for path, artifact in artifacts.items():
                if artifact is not None:
                    accuracy = reduced_accuracy(prepared, artifact, config)
                    results.setdefault("accuracy", {}).setdefault(name, {})[path] = accuracy
                    echo(f"  accuracy: {accuracy['summary']}")
            for m in measurements:
                if m.model == name and m.times:
                    echo(f"  {m.path:28s} N={m.n:>7,d} {m.instances_per_s:>12,.0f} inst/s  "
                         f"p50 {m.p50 * 1e3:8.1f} ms  {m.gflops:6.1f} GFLOP/s")
                elif m.model == name:
                    echo(f"  {m.path:28s} N={m.n:>7,d} skipped: {m.skipped}")
        if overhead_rows and prepared_models[0].onnx_path is not None:
            overhead_rows.extend(_multi_bag_overhead(prepared_models[0], config))
        if config.triton:
            results["loopback_gbs"] = loopback_bandwidth(min(64 << 20, config.bandwidth_bytes))
            echo(f"Triton: one server, Python backend (loopback TCP {results['loopback_gbs']:.2f} GB/s)")
            try:
                _triton_phase(prepared_models, config, runner, root)
            except Exception as exc:  # noqa: BLE001 - the in-process results still get written
                results["notes"]["Triton"] = [f"failed: {str(exc).splitlines()[0]}"]
            for m in measurements:
                if m.path.startswith("Triton"):
                    echo(f"  {m.model:10s} {m.path:28s} N={m.n:>7,d} " + (
                        f"{m.instances_per_s:>12,.0f} inst/s  p50 {m.p50 * 1e3:8.1f} ms" if m.times
                        else f"skipped: {m.skipped}"))
        if config.rss:
            for prepared in prepared_models:
                n = config.rss_size or _largest_measured(measurements, prepared.name)
                if n is None:
                    continue
                echo(f"{prepared.name}: peak RSS of one {n:,}-instance bag, a fresh process per path")
                rss_rows.extend(peak_rss(prepared, n, config.dim, root / "rss", full=not config.quick))
        results["measurements"] = [asdict(m) for m in measurements]
        results["overhead"] = overhead_rows
        results["rss"] = rss_rows
    results["seconds"] = time.time() - started
    results["machine"]["load_average_end"] = list(os.getloadavg())
    out_dir.mkdir(parents=True, exist_ok=True)  # only now: a run that fails leaves no folder behind
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    write_plot(results, out_dir / "throughput.png")
    write_report(results, out_dir / "RESULTS.md", plot_name="throughput.png")
    echo(f"wrote {out_dir / 'RESULTS.md'}, {out_dir / 'throughput.png'}, {out_dir / 'results.json'} "
         f"in {results['seconds']:.0f} s")
    return results


def reduced_accuracy(prepared: PreparedModel, artifact: Path, config: SuiteConfig) -> dict[str, Any]:
    """A reduced-precision artifact's accuracy report against eager float32 on synthetic bags of the suite's sizes
    (at most 16,000 instances: the eager reference runs each bag once)."""
    from milsdk.export.accuracy import accuracy_report
    from milsdk.export.artifact import read_model_info

    info = read_model_info(artifact)
    bags = [(f"synthetic-{n}", model_inputs(make_bag(n, config.dim, seed=config.seed + 1), info.inputs))
            for n in sorted({min(int(n), 16_000) for n in config.sizes})]
    report = accuracy_report(artifact, prepared.model, bags, bags_source="synthetic Gaussian")
    return {"summary": report.summary(), "max_probability_change": report.max_probability_change,
            "min_attention_spearman": report.min_attention_spearman, "passed": report.passed,
            "sizes": [int(inputs["mask"].shape[1]) for _, inputs in bags]}


def _largest_measured(measurements: list[Measurement], model: str) -> int | None:
    done = [m.n for m in measurements if m.model == model and m.path == "onnxruntime (MILClient)" and m.times]
    return max(done) if done else None


def _multi_bag_overhead(prepared: PreparedModel, config: SuiteConfig) -> list[dict[str, Any]]:
    """Client overhead on many small bags (the planner pads and packs them): 64 log-normal sizes, median 1,000
    (quick: median 100)."""
    import onnxruntime as ort

    from milsdk.serving import MILClient

    median = 100 if config.quick else 1000
    sizes = _lognormal_sizes(64, median, 0.75, config.seed + 1, cap=max(config.sizes))
    bags = [make_bag(int(n), config.dim, seed=i)["features"] for i, n in enumerate(sizes)]
    with MILClient.from_path(prepared.onnx_path) as client:
        raw = ort.InferenceSession(str(prepared.onnx_path), providers=["CPUExecutionProvider"])
        result = client_overhead(client, raw, f"64 bags, median {median}", bags, config.repeats, config.warmup,
                                 config.settle_s)
    return [_overhead_row(prepared.name, result)]
