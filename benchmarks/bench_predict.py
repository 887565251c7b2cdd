"""Throughput of ``MILClient.predict`` over realistic bags: embedded onnxruntime and Triton vs eager PyTorch.

200 bags with log-normal sizes (median 3,000 instances), D = 1024, for ABMIL and TransMIL at their default sizes.
Each path predicts the same bags; eager PyTorch runs them one by one (no padding) in the same process. The planner's
padded-slot fraction is reported for the batched paths, and every path's outputs are checked against eager.
Writes a markdown table (``--out``). Not a test: nothing is asserted about timings.

    python benchmarks/bench_predict.py                      # everything (~5-10 min on 2 CPU cores)
    python benchmarks/bench_predict.py --models abmil --no-triton --bags 50
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from milsdk.export import DeploymentModule, export_onnx, read_model_info, write_triton_model
from milsdk.models import ABMIL, TransMIL
from milsdk.serving import MILClient, TritonServer
from milsdk.serving.client import IN_PROCESS_MAX_INSTANCES

MODELS = {"abmil": ABMIL, "transmil": TransMIL}


def make_bags(n_bags: int, median: int, sigma: float, dim: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = np.clip(np.round(np.exp(rng.normal(np.log(median), sigma, size=n_bags))), 1, 100_000).astype(int)
    return [rng.standard_normal((int(n), dim), dtype=np.float32) for n in sizes]


def eager(model: torch.nn.Module, bags: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
    module = DeploymentModule(model)
    logits = []
    start = time.perf_counter()
    with torch.inference_mode():
        for bag in bags:
            x = torch.from_numpy(bag)[None]
            out, _ = module(x, torch.ones(x.shape[:2], dtype=torch.bool))
            logits.append(out[0].numpy())
    return time.perf_counter() - start, logits


def timed_predict(client: MILClient, bags: list[np.ndarray]) -> tuple[float, list[np.ndarray], float]:
    client.predict(bags[:4])  # warm-up: sessions, connections, first allocations
    start = time.perf_counter()
    preds = client.predict(bags)
    seconds = time.perf_counter() - start
    assert all(p.ok for p in preds), [p.error for p in preds if not p.ok][:3]
    return seconds, [p.logits for p in preds], client.last_run.padded_fraction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bags", type=int, default=200)
    parser.add_argument("--median", type=int, default=3000, help="median bag size")
    parser.add_argument("--sigma", type=float, default=0.75, help="log-normal sigma of the bag sizes")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--models", default="abmil,transmil")
    parser.add_argument("--max-instances", type=int, default=None,
                        help="padded slots per request (default: each client's own default)")
    parser.add_argument("--no-triton", action="store_true", help="skip the Triton rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_predict.md")
    args = parser.parse_args()

    bags = make_bags(args.bags, args.median, args.sigma, args.dim, args.seed)
    sizes = np.array([len(b) for b in bags])
    n_instances = int(sizes.sum())
    rows = []
    with tempfile.TemporaryDirectory(prefix="milsdk-bench-") as tmp:
        tmp = Path(tmp)
        repo = tmp / "model_repository"
        paths, references = {}, {}

        def add(model_name: str, path_name: str, client: MILClient) -> None:
            with client:
                seconds, logits, padded = timed_predict(client, bags)
            error = max(float(np.abs(a - b).max()) for a, b in zip(logits, references[model_name]))
            rows.append((model_name, path_name, seconds, error, padded))
            print(f"{model_name:9s} {path_name:32s} {seconds:7.2f} s  max |logit - eager| {error:.1e}", flush=True)

        budget = {} if args.max_instances is None else {"max_instances": args.max_instances}
        for name in args.models.split(","):
            torch.manual_seed(0)
            model = MODELS[name](in_shape=(args.dim,)).eval()
            paths[name] = export_onnx(model, tmp / f"{name}.onnx")
            write_triton_model(repo, name, {"onnx": paths[name]}, read_model_info(paths[name]), backend="python")
            seconds, references[name] = eager(model, bags)
            rows.append((name, "eager PyTorch, one bag at a time", seconds, None, 0.0))
            print(f"{name:9s} {'eager PyTorch':32s} {seconds:7.2f} s", flush=True)
            add(name, "onnxruntime (in-process)", MILClient.from_path(paths[name], **budget))
        if not args.no_triton:
            with TritonServer(repo) as server:
                for name in paths:
                    for label, url, shm in [
                        ("Triton HTTP (Python backend)", server.http_url, False),
                        ("Triton gRPC (Python backend)", server.grpc_url, False),
                        ("Triton HTTP + shared memory", server.http_url, True),
                    ]:
                        add(name, label, MILClient.from_triton(url, name, shared_memory=shm, **budget))

    lines = [
        f"# predict throughput: {args.bags} bags, log-normal sizes (median {int(np.median(sizes))}, "
        f"mean {int(sizes.mean())}, max {int(sizes.max())}), D = {args.dim}",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU; torch "
        f"{torch.__version__}, onnxruntime {onnxruntime.__version__}, numpy {np.__version__}. "
        + (f"max_instances {args.max_instances} padded slots per request." if args.max_instances else
           f"Client defaults: in-process {IN_PROCESS_MAX_INSTANCES:,} padded slots per request, 1 in flight; "
           "Triton 32,768 slots, 4 in flight, the model's max_batch_size (8)."),
        "",
        "| model | path | seconds | bags/s | instances/s | padded slots | max abs logit diff vs eager |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for model_name, path_name, seconds, error, padded in rows:
        lines.append(
            f"| {model_name} | {path_name} | {seconds:.2f} | {args.bags / seconds:.1f} | "
            f"{n_instances / seconds:,.0f} | {100 * padded:.1f}% | {'-' if error is None else f'{error:.1e}'} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
