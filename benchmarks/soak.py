"""Soak: many bag requests from concurrent clients to a local Triton server, every answer checked.

Each of ``--clients`` threads has its own ``MILClient`` (even threads over HTTP, odd ones over gRPC) and sends its
share of ``--requests`` bags one request each (``predict([bag])``, the way an application that handles one slide
at a time calls it). The bags come from a pool of ``--pool`` bags (log-uniform sizes 1 .. ``--max-n``, D =
``--dim``); each answer is compared with the same model.onnx run by onnxruntime in this process on the same
one-bag batch (max abs difference <= 1e-5), and a wrong or failed answer counts as an error. Reported: requests,
errors, wall time, requests/s, latency p50 / p99 / max per request, and the resident memory (VmRSS from /proc) of
this process (the clients) and of the server (tritonserver and its Python-backend stubs) after a warm-up (each
pool bag sent once), through the run and at the end. Not a test: nothing is asserted about timings (tests/integration/test_soak.py runs a short version and
asserts zero errors).

    python benchmarks/soak.py                                 # 10,000 requests, 8 clients, ABMIL D=64 (~1-2 min)
    python benchmarks/soak.py --requests 300 --clients 4
    python benchmarks/soak.py --append-results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from milsdk.serving import MILClient, TritonServer

TOL = 1e-5


def make_pool(n_bags: int, max_n: int, dim: int, seed: int = 0) -> list[np.ndarray]:
    """``n_bags`` float32 bags (N_i, dim), N_i log-uniform in 1 .. max_n (both ends included)."""
    rng = np.random.default_rng(seed)
    sizes = np.round(np.exp(rng.uniform(0, np.log(max_n), size=n_bags))).astype(int)
    sizes[:2] = [1, max_n]
    return [rng.standard_normal((int(n), dim), dtype=np.float32) for n in sizes]


def reference(onnx_path: str | Path, pool: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(logits, attention) of each bag run alone by in-process onnxruntime: the batches the soak sends."""
    with MILClient.from_path(onnx_path, max_batch_size=1) as local:
        preds = local.predict(pool)
    assert all(p.ok for p in preds), [p.error for p in preds if not p.ok][:3]
    return [(p.logits, p.attention) for p in preds]


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` (KiB, VmRSS from /proc); 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the server's Python-backend stubs are its children)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(child) for child in task.read_text().split()]
            except OSError:
                continue
    return pids


def tree_rss_kib(pid: int) -> int:
    return sum(rss_kib(p) for p in process_tree(pid))


@dataclass
class SoakReport:
    """What one soak run did (latencies in seconds, memory in KiB)."""

    requests: int = 0
    errors: int = 0
    mismatches: int = 0
    first_errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    clients: int = 0
    client_rss_start: int = 0
    client_rss_end: int = 0
    server_rss_start: int = 0
    server_rss_end: int = 0
    #: (seconds since the start, client RSS, server RSS), sampled through the run
    rss_samples: list[tuple[float, int, int]] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    def markdown(self, setup: str) -> str:
        mib = 1024
        return "\n".join([
            "## Soak",
            "",
            setup,
            "",
            (
                "| requests | clients | errors | wrong answers | wall | requests/s | p50 | p99 | max "
                "| client RSS start -> end | server RSS start -> end |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|---|",
            (
                f"| {self.requests:,} | {self.clients} | {self.errors} | {self.mismatches} | {self.seconds:.1f} s "
                f"| {self.requests / self.seconds:.0f} | {1e3 * self.percentile(50):.1f} ms "
                f"| {1e3 * self.percentile(99):.1f} ms | {1e3 * max(self.latencies):.1f} ms "
                f"| {self.client_rss_start / mib:.0f} -> {self.client_rss_end / mib:.0f} MiB "
                f"| {self.server_rss_start / mib:.0f} -> {self.server_rss_end / mib:.0f} MiB |"
            ),
            "",
            f"RSS through the run (MiB, at 0 / 25 / 50 / 75 / 100 % of the wall time): client "
            f"{' / '.join(f'{c / mib:.0f}' for _, c, _ in self.quartiles())}, server "
            f"{' / '.join(f'{v / mib:.0f}' for _, _, v in self.quartiles())}.",
            "",
        ])

    def quartiles(self) -> list[tuple[float, int, int]]:
        """The RSS samples nearest 0, 25, 50, 75 and 100 % of the run."""
        if not self.rss_samples:
            return []
        end = self.rss_samples[-1][0]
        return [min(self.rss_samples, key=lambda sample: abs(sample[0] - q * end)) for q in (0, .25, .5, .75, 1)]


def run_soak(
    server: TritonServer,
    model: str,
    pool: list[np.ndarray],
    expected: list[tuple[np.ndarray, np.ndarray]],
    n_requests: int,
    n_clients: int,
    warmup: int | None = None,
) -> SoakReport:
    """Send ``n_requests`` one-bag requests from ``n_clients`` threads (own MILClient each; HTTP and gRPC
    alternate) and check every answer against ``expected`` (same order as ``pool``).

    Before the start (and the first RSS reading) every client connects and the first ``warmup`` pool bags
    (None = all) are sent once, round robin: the server's runtime has then seen every bag shape it will see, and
    the RSS that follows is the steady state, not arenas growing on first shapes.

    Returns:
        The :class:`SoakReport`; errors and wrong answers are counted, never raised.
    """
    report = SoakReport(clients=n_clients)
    lock = threading.Lock()
    clients = [
        MILClient.from_triton(server.http_url if i % 2 == 0 else server.grpc_url, model, max_batch_size=1,
                              max_in_flight=1, retry_deadline_s=30)
        for i in range(n_clients)
    ]
    try:
        for client in clients:  # connections
            client.predict([pool[0]])
        for k, bag in enumerate(pool[:warmup] if warmup is not None else pool):
            clients[k % n_clients].predict([bag])
        report.client_rss_start, report.server_rss_start = rss_kib(os.getpid()), tree_rss_kib(server.pid)

        def work(slot: int) -> None:
            client = clients[slot]
            latencies, sent, errors, mismatches, first = [], 0, 0, 0, []
            for r in range(slot, n_requests, n_clients):
                sent += 1
                i = r % len(pool)
                started = time.perf_counter()
                try:
                    pred = client.predict([pool[i]])[0]
                except Exception as exc:  # counted: a soak reports failures, it does not stop at the first
                    errors += 1
                    first.append(f"request {r}: {type(exc).__name__}: {exc}")
                    continue
                latencies.append(time.perf_counter() - started)
                if not pred.ok:
                    errors += 1
                    first.append(f"request {r}: {pred.error}")
                elif not (np.allclose(pred.logits, expected[i][0], atol=TOL, rtol=0)
                          and np.allclose(pred.attention, expected[i][1], atol=TOL, rtol=0)):
                    mismatches += 1
                    first.append(f"request {r}: bag {i} differs from in-process onnxruntime")
            with lock:
                report.requests += sent
                report.errors += errors
                report.mismatches += mismatches
                report.latencies += latencies
                report.first_errors += first[:3]

        threads = [threading.Thread(target=work, args=(slot,)) for slot in range(n_clients)]
        done = threading.Event()
        started = time.perf_counter()

        def sample() -> None:
            while not done.wait(0.5):
                report.rss_samples.append(
                    (time.perf_counter() - started, rss_kib(os.getpid()), tree_rss_kib(server.pid))
                )

        report.rss_samples.append((0.0, report.client_rss_start, report.server_rss_start))
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        report.seconds = time.perf_counter() - started
        done.set()
        sampler.join()
        report.client_rss_end, report.server_rss_end = rss_kib(os.getpid()), tree_rss_kib(server.pid)
        report.rss_samples.append((report.seconds, report.client_rss_end, report.server_rss_end))
    finally:
        for client in clients:
            client.close()
    return report


def export_abmil(root: Path, dim: int) -> tuple[Path, Path]:
    """ABMIL (in_shape=(dim,), default sizes otherwise, seeded) exported as the Python-backend variant."""
    import torch

    from milsdk.export import export_onnx, read_model_info, write_triton_model
    from milsdk.models import ABMIL

    torch.manual_seed(0)
    onnx_path = export_onnx(ABMIL(in_shape=(dim,)).eval(), root / "abmil.onnx")
    repo = root / "model_repository"
    write_triton_model(repo, "abmil", {"onnx": onnx_path}, read_model_info(onnx_path), backend="python")
    return repo, onnx_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64, help="feature dimension D of the ABMIL served")
    parser.add_argument("--pool", type=int, default=200, help="distinct bags the requests cycle through")
    parser.add_argument("--max-n", type=int, default=2000, help="largest bag (instances)")
    parser.add_argument("--append-results", type=Path, help="append the '## Soak' section to this markdown file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="milsdk-soak-") as tmp:
        repo, onnx_path = export_abmil(Path(tmp), args.dim)
        pool = make_pool(args.pool, args.max_n, args.dim)
        expected = reference(onnx_path, pool)
        with TritonServer(repo, exit_timeout_s=2) as server:
            report = run_soak(server, "abmil", pool, expected, args.requests, args.clients)
    sizes = np.array([len(b) for b in pool])
    setup = (
        f"`python benchmarks/soak.py --requests {args.requests} --clients {args.clients} --dim {args.dim}`: ABMIL "
        f"(default sizes, D={args.dim}), Python-backend variant on the pip-installed Triton (CPU), loopback; "
        f"{args.clients} threads with their own MILClient (HTTP and gRPC alternating), one bag per request, bags "
        f"cycled from a pool of {args.pool} (N = 1 .. {sizes.max()}, median {int(np.median(sizes))}); every "
        f"answer compared with in-process onnxruntime on the same one-bag batch (atol {TOL:g}). Latency is per "
        f"request as the application sees it (predict([bag])). RSS = VmRSS after a warm-up (every pool bag sent "
        f"once) and at the end; client = this process (it also holds torch, used to export, and the reference "
        f"onnxruntime session); server = tritonserver + its Python-backend stubs. {platform.node() or 'this machine'}: {os.cpu_count()} CPU "
        f"cores, shared with other work while it ran."
    )
    text = report.markdown(setup)
    print(text)
    for line in report.first_errors[:10]:
        print("  ", line)
    if args.append_results is not None:
        previous = args.append_results.read_text() if args.append_results.is_file() else "# Benchmark results\n"
        args.append_results.write_text(previous.rstrip("\n") + "\n\n" + text)


if __name__ == "__main__":
    main()
