"""The model zoo, end to end, as a new user runs it: for every registered model, train 20 Adam steps, save a
checkpoint, ``milsdk export CKPT --format all`` (default verification plan), then check the artifacts against
eager PyTorch on bags of sizes never used at export (1 to 40,000 instances, each bag alone) and measure the peak
memory of a 40,000-instance bag through the ONNX artifact (in a fresh process, ``MILClient.from_path``).

Writes ``benchmarks/results/zoo.md`` (and ``zoo.json``) and, with ``--readme``, replaces the model table in
README.md between the ``<!-- zoo-table -->`` markers. Not a test: it states what it measured.

    python benchmarks/zoo_report.py                          # every model, D = 1024 (~15 min on 2 CPU cores)
    python benchmarks/zoo_report.py --models ABMIL,TransMIL --sizes 1,100,5000
    python benchmarks/zoo_report.py --models "" --merge --readme  # the tables again from results/zoo.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from milsdk.contract import COORDS, EDGE_INDEX, EDGE_WEIGHT, FEATURES
from milsdk.export.signature import DeploymentModule
from milsdk.models import get_model_class, list_models
from milsdk.utils.checkpoint import load_checkpoint, save_checkpoint
from milsdk.utils.graph import coords_graph

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MARK_BEGIN, MARK_END = "<!-- zoo-table -->", "<!-- /zoo-table -->"


def grid_coords(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) float32 distinct positions on a roughly square patch grid."""
    side = int(np.ceil(np.sqrt(n)))
    cells = rng.permutation(side * side)[:n]
    return np.stack([cells // side, cells % side], axis=1).astype(np.float32)


def make_bag(n: int, dim: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Features, coords and the 8-neighbour graph of the coords (what the client builds for graph models)."""
    coords = grid_coords(n, rng)
    edge_index, edge_weight = coords_graph(coords)
    return {
        FEATURES: rng.standard_normal((n, dim), dtype=np.float32),
        COORDS: coords,
        EDGE_INDEX: edge_index,
        EDGE_WEIGHT: edge_weight,
    }


def extra_inputs(model: torch.nn.Module, bag: dict[str, np.ndarray], for_loss: bool = False) -> dict[str, torch.Tensor]:
    """A model's extra forward (or, ``for_loss``, compute_loss) inputs for one bag, batched."""
    wanted = set(model.extra_inputs)
    if for_loss and "adj" in inspect.signature(model.compute_loss).parameters:
        wanted.add("adj")
    out = {}
    if "coords" in wanted:
        out["coords"] = torch.from_numpy(bag[COORDS])[None]
    if "adj" in wanted:
        out["edge_index"] = torch.from_numpy(bag[EDGE_INDEX])[None]
        out["edge_weight"] = torch.from_numpy(bag[EDGE_WEIGHT])[None]
    return out


def train_checkpoint(name: str, dim: int, steps: int, path: Path, seed: int = 0) -> Path:
    """The model at its default configuration, ``steps`` Adam steps (lr 1e-3) on bags of 1-200 instances whose
    label shows as a shift of a few instances, saved as a milsdk checkpoint."""
    cls = get_model_class(name)
    n_classes = min(cls.test_n_classes)
    torch.manual_seed(seed)
    model = cls(in_shape=(dim,), n_classes=n_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        n = int(rng.integers(1, 201))
        bag = make_bag(n, dim, rng)
        y = int(rng.integers(0, max(n_classes, 2)))
        if y:
            bag[FEATURES][: max(1, n // 4), y] += 2.0
        X = torch.from_numpy(bag[FEATURES])[None]
        extra = extra_inputs(model, bag, for_loss=True)
        _, losses = model.compute_loss(torch.tensor([y]), X, mask=torch.ones(1, n, dtype=torch.bool), **extra)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    return save_checkpoint(model.eval(), path)


def export_cli(ckpt: Path, out: Path) -> tuple[float, str]:
    """``milsdk export CKPT --format all -o OUT`` as a user runs it; (seconds, last output line)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "milsdk.cli", "export", str(ckpt), "--format", "all", "-o", str(out)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"milsdk export {ckpt.name} failed ({proc.returncode}): {proc.stderr.strip()[-600:]}")
    return time.perf_counter() - start, proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


def parity_on_unseen_sizes(ckpt: Path, out: Path, sizes: list[int], dim: int) -> dict[str, float]:
    """Max |artifact - eager| over logits and attention, each bag alone, for the ONNX and TorchScript files; for a
    graph model also ``adj_vs_edges``: eager on the sparse (1, N, N) adjacency (the training form) against eager
    on the edge list (the serving form), on the sizes up to 5,003."""
    model = load_checkpoint(ckpt).eval()
    module = DeploymentModule(model)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(out / "model.pt"))
    rng = np.random.default_rng(123)
    worst = {"onnx": 0.0, "torchscript": 0.0}
    graph = "adj" in model.extra_inputs
    if graph:
        worst["adj_vs_edges"] = 0.0
    for n in sizes:
        bag = make_bag(n, dim, rng)
        feeds = {FEATURES: bag[FEATURES][None], "mask": np.ones((1, n), bool), COORDS: bag[COORDS][None],
                 EDGE_INDEX: bag[EDGE_INDEX][None], EDGE_WEIGHT: bag[EDGE_WEIGHT][None]}
        feeds = {k: feeds[k] for k in module.input_names}
        tensors = [torch.from_numpy(feeds[k]) for k in module.input_names]
        with torch.inference_mode():
            want = [t.numpy() for t in module(*tensors)]
            got_ts = [t.numpy() for t in scripted(*tensors)]
        got_onnx = session.run(["logits", "attention"], feeds)
        compared = [("onnx", got_onnx, want), ("torchscript", got_ts, want)]
        if graph and n <= 5003:
            edge_index, edge_weight = torch.from_numpy(bag[EDGE_INDEX]), torch.from_numpy(bag[EDGE_WEIGHT])
            adj = torch.sparse_coo_tensor(edge_index, edge_weight, (n, n)).coalesce().unsqueeze(0)
            X, mask = torch.from_numpy(bag[FEATURES])[None], torch.ones(1, n, dtype=torch.bool)
            with torch.inference_mode():
                from_adj = model(X, adj=adj, mask=mask, return_att=True)
                from_edges = model(X, mask=mask, return_att=True, edge_index=edge_index[None],
                                   edge_weight=edge_weight[None])
            compared.append(("adj_vs_edges", [t.numpy() for t in from_adj], [t.numpy() for t in from_edges]))
        for fmt, got, expected in compared:
            diff = max(float(np.abs(g.astype(np.float64) - w).max()) for g, w in zip(got, expected))
            worst[fmt] = max(worst[fmt], diff if np.isfinite(diff) else float("inf"))
    return worst


_PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from milsdk.serving import MILClient

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    path, n, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(n)))
    cells = rng.permutation(side * side)[:n]
    bag = {"features": rng.standard_normal((n, dim), dtype=np.float32),
           "coords": np.stack([cells // side, cells % side], 1).astype(np.float32)}
    client = MILClient.from_path(path)
    before = rss("VmRSS:")
    pred = client.predict([bag])[0]
    assert pred.ok, pred.error
    print(json.dumps({"before": before, "peak": rss("VmHWM:"), "attention_sum": float(pred.attention.sum())}))
    """
)


def peak_rss(onnx_path: Path, n: int, dim: int) -> dict[str, float]:
    """Peak RSS (bytes) of a fresh process that loads the artifact and predicts one n-instance bag."""
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(onnx_path), str(n), str(dim)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gb(x: float) -> str:
    return f"{x / 1e9:.2f} GB"


def table(rows: list[dict]) -> str:
    lines = [
        "| model | extra inputs | ONNX | TorchScript | padding-invariant | max parity error (export verification / "
        "unseen sizes) | adj vs edge list, eager (<= 5,003) | peak RSS, 40k-instance bag (ONNX) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peak = r.get("peak_40k", {})
        memory = (
            f"{gb(peak['peak'])} (bag {gb(r['bag_bytes'])})" if "peak" in peak else peak.get("error", "-")
        )
        lines.append(
            f"| {r['model']} | {', '.join(r['extra_inputs']) or '-'} | {r['onnx']} | {r['torchscript']} | "
            f"{'yes' if r['padding_invariant'] else 'no'} | {r['verify_parity']:.1e} / {r['unseen_parity']:.1e} | "
            f"{'-' if r.get('adj_vs_edges') is None else format(r['adj_vs_edges'], '.1e')} | {memory} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(list_models()), help="comma-separated registered names")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sizes", default="1,2,7,100,999,5003,17000,40000", help="unseen bag sizes")
    parser.add_argument("--peak-size", type=int, default=40_000)
    parser.add_argument("--readme", action="store_true", help="rewrite README.md's model table")
    parser.add_argument("--merge", action="store_true", help="keep the other models' rows of results/zoo.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="milsdk-zoo-") as tmp:
        for name in [n for n in args.models.split(",") if n]:  # --models "" --merge: rewrite from zoo.json
            cls = get_model_class(name)
            work = Path(tmp) / name
            work.mkdir()
            ckpt = train_checkpoint(name, args.dim, args.steps, work / f"{name.lower()}.ckpt")
            base = {
                "model": name,
                "extra_inputs": list(cls.extra_inputs),
                "padding_invariant": bool(cls.padding_invariant),
                "bag_bytes": args.peak_size * args.dim * 4,
            }
            try:
                seconds, _ = export_cli(ckpt, work / "export")
            except RuntimeError as exc:  # a failed export is a finding: the row says so
                row = {**base, "onnx": "FAILED", "torchscript": "FAILED", "error": str(exc).splitlines()[-1],
                       "verify_parity": float("nan"), "unseen_parity": float("nan"), "peak_40k": {}}
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            report = json.loads((work / "export" / "verification.json").read_text())
            formats = {a["format"]: a for a in report["artifacts"]}
            parity = max(
                max(c["value"] or 0 for c in a["checks"] if c["name"].startswith("parity_")) for a in formats.values()
            )
            unseen = parity_on_unseen_sizes(ckpt, work / "export", sizes, args.dim)
            peak = peak_rss(work / "export" / "model.onnx", args.peak_size, args.dim)
            row = {
                **base,
                "onnx": "yes" if formats["onnx"]["passed"] else "FAILED",
                "torchscript": "yes" if formats["torchscript"]["passed"] else "FAILED",
                "verify_parity": parity,
                "unseen_parity": max(unseen["onnx"], unseen["torchscript"]),
                "adj_vs_edges": unseen.get("adj_vs_edges"),
                "unseen_sizes": sizes,
                "export_s": round(seconds, 1),
                "peak_40k": peak,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / "zoo.partial.json").write_text(json.dumps(rows, indent=2))  # survives an interrupted run
    previous = RESULTS / "zoo.json"
    if args.merge and previous.exists():
        done = {r["model"] for r in rows}
        rows = [r for r in json.loads(previous.read_text()) if r["model"] not in done] + rows
    rows.sort(key=lambda r: list_models().index(r["model"]) if r["model"] in list_models() else 99)
    text = table(rows)
    header = (
        f"Measured by `python benchmarks/zoo_report.py` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; D = {args.dim}, "
        f"each model at its default configuration after {args.steps} Adam steps (lr 1e-3); unseen sizes "
        f"{', '.join(map(str, sizes))} (each bag alone, ONNX and TorchScript vs eager).\n\n"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "zoo.md").write_text(header + text + "\n")
    (RESULTS / "zoo.json").write_text(json.dumps(rows, indent=2))
    if args.readme:
        readme = (ROOT / "README.md").read_text()
        start, end = readme.index(MARK_BEGIN) + len(MARK_BEGIN), readme.index(MARK_END)
        (ROOT / "README.md").write_text(readme[:start] + "\n" + text + "\n" + readme[end:])
    print(text)


if __name__ == "__main__":
    main()
