"""The suite's report: ``RESULTS.md`` (machine, ceilings, every measurement against the ceiling, skips, overhead,
padding, peak RSS, the issue's targets) and a PNG of instances/s against bag size per model and path."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from milsdk.bench.workload import BFLOAT16_PATH, IN_PROCESS_BESIDE_TRITON, INT8_WEIGHTS_PATH

__all__ = ["write_report", "write_plot", "ceiling", "targets"]

_SERVED = "onnxruntime (MILClient)"
_INT8_GOAL = "x1.8 over float32 served, probability change <= 0.02, attention Spearman >= 0.98"
#: (path, goal) of each reduced-precision path against float32 served; bfloat16 is measured against int8's goal
_REDUCED_GOALS = (
    ("onnxruntime int8 (MILClient)", f"int8: >= {_INT8_GOAL}"),
    (INT8_WEIGHTS_PATH, f"int8 weights (cpu-int8-vnni): >= {_INT8_GOAL}"),
    (BFLOAT16_PATH, f"bfloat16 (cpu-bf16, measured against int8's goal): >= {_INT8_GOAL}"),
)


def ceiling(results: dict[str, Any]) -> dict[str, Any]:
    """The reference GEMM: the fastest runtime on the first ceiling shape (an attention MIL first layer)."""
    first = results["gemm"][0]["shape"]
    return max((g for g in results["gemm"] if g["shape"] == first), key=lambda g: g["gflops"])


def _rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for m in results["measurements"]:
        row = dict(m)
        if m["times"]:
            row["p50"] = float(np.median(m["times"]))
            row["p99"] = float(np.percentile(m["times"], 99))
            row["ips"] = m["n"] / row["p50"]
            row["gflops"] = m["flops"] / row["p50"] / 1e9
        rows.append(row)
    return rows


def _find(rows: list[dict[str, Any]], model: str, path: str, n: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["model"] == model and r["path"] == path and r["n"] == n and r.get("p50")),
                None)


def targets(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(target, what this run measured) for each target of issue 17; 'not measured (why)' where it has none."""
    rows = _rows(results)
    top = ceiling(results)
    out: list[tuple[str, str]] = []

    def ratio(model: str, n: int, path: str, base: str) -> str:
        a, b = _find(rows, model, path, n), _find(rows, model, base, n)
        if a is None or b is None:
            return f"not measured at N={n:,}"
        return f"x{a['ips'] / b['ips']:.2f} at N={n:,} ({a['ips']:,.0f} vs {b['ips']:,.0f} inst/s)"

    served = _find(rows, "ABMIL", _SERVED, 16000)
    if served is None:
        out.append(("ABMIL served >= 80% of the GEMM bound at 16k and >= x2.0 torchmil eager",
                    "not measured (no ABMIL onnxruntime row at N=16,000 in this run)"))
    else:
        share = served["gflops"] / top["gflops"]
        out.append(("ABMIL served >= 80% of the GEMM bound at 16k",
                    f"{served['gflops']:.0f} GFLOP/s = {100 * share:.0f}% of {top['gflops']:.0f} "
                    f"({top['runtime']} {top['shape']}); {served['ips']:,.0f} inst/s"))
        out.append(("ABMIL served >= x2.0 torchmil eager at 16k", ratio("ABMIL", 16000, _SERVED, "eager torchmil")))
    for n in (4000, 16000):
        out.append((f"TransMIL served >= x1.7 torchmil eager at {n // 1000}k",
                    ratio("TransMIL", n, _SERVED, "eager torchmil")))
    for model in ("ABMIL", "TransMIL"):
        for path, goal in _REDUCED_GOALS:
            goal = f"{model} {goal}"
            accuracy = results.get("accuracy", {}).get(model, {}).get(path)
            speed = [ratio(model, n, path, _SERVED)
                     for n in sorted({r["n"] for r in rows if r["model"] == model})
                     if _find(rows, model, path, n) and _find(rows, model, _SERVED, n)]
            if accuracy is None or not speed:
                out.append((goal, f"not measured (no {path} row for this model in this run)"))
                continue
            rho = accuracy["min_attention_spearman"]
            out.append((goal, "; ".join(speed) + f"; max probability change "
                        f"{accuracy['max_probability_change']:.4f}, min attention Spearman "
                        f"{'n/a' if rho is None else f'{rho:.4f}'} (synthetic bags)"))
    triton_goals = (("TransMIL", "Triton HTTP", 85), ("TransMIL", "Triton HTTP+shm", 95),
                    ("ABMIL", "Triton HTTP", 25), ("ABMIL", "Triton HTTP+shm", 70))
    for model, transport, goal in triton_goals:
        parts = []
        for path, label in ((f"{transport} (MILClient)", ""),
                            (f"{transport} float16 wire (MILClient)", "float16 wire: ")):
            measured = [(n, r, base) for n in sorted({r["n"] for r in rows})
                        if (r := _find(rows, model, path, n)) and (base := _in_process(rows, model, n))]
            if measured:
                parts.append(label + ", ".join(f"{100 * r['ips'] / base['ips']:.0f}% at N={n:,}"
                                               for n, r, base in measured))
        out.append((f"{model} {transport} >= {goal}% of in-process",
                     "; ".join(parts) if parts else "not measured (run with --triton)"))
    triton_plan = next((p for p in results["planner"] if p["setting"].startswith("Triton")), None)
    if triton_plan:
        out.append(("padding through Triton <= 3%",
                    f"{100 * triton_plan['padded_fraction']:.1f}% planned with the Triton client defaults on "
                    f"{triton_plan['bags']} log-normal bag sizes"))
    for model, goal in (("ABMIL", 3), ("TransMIL", 4)):
        row = next((r for r in results["rss"] if r["model"] == model and r["path"] == _SERVED and "peak" in r), None)
        if row is None:
            out.append((f"{model} peak RSS of a 100k bag <= {goal}x the bag", "not measured"))
        else:
            out.append((f"{model} peak RSS of a 100k bag <= {goal}x the bag",
                        f"{row['peak'] / row['bag_bytes']:.2f}x at N={row['n']:,} "
                        f"({row['peak'] / 1e9:.2f} GB for a {row['bag_bytes'] / 1e9:.2f} GB bag)"))
    single = [o for o in results["overhead"] if o["bags"].startswith("1 bag")]
    if single:
        out.append(("client overhead <= 5% over a default onnxruntime session",
                    "; ".join(f"{o['model']} {o['bags']}: {100 * o['overhead']:+.1f}% (p50), "
                              f"{100 * o.get('overhead_best', o['overhead']):+.1f}% (fastest calls)"
                              for o in single)))
    return out


def _in_process(rows: list[dict[str, Any]], model: str, n: int) -> dict[str, Any] | None:
    """The in-process row a Triton row is compared with: the one timed in the Triton paths' rounds where the run
    has it, else the in-process path's own."""
    return _find(rows, model, IN_PROCESS_BESIDE_TRITON, n) or _find(rows, model, _SERVED, n)


def _transport_lines(results: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """The Triton rows as transport: a request's bytes (features float32, or float16 on the float16 wire, and mask)
    per second of its p50, against the machine's loopback TCP throughput measured in the same run."""
    triton = [r for r in rows if r["path"].startswith("Triton") and r.get("p50")]
    loopback = results.get("loopback_gbs")
    if not triton or not loopback:
        return []
    dim = results["config"]["dim"]
    lines = [
        "## Triton transport", "",
        f"Loopback TCP (one thread sends, another receives into a preallocated buffer, no protocol): "
        f"**{loopback:.2f} GB/s**. A request carries the bag's features (float32; float16 on the float16 wire) and "
        "mask; its time includes the server's run, so the in-process p50 (float32) of the same bag is shown beside "
        "it.", "",
        "| model | path | N | request MB | p50 ms | request GB/s | of loopback | in-process p50 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in triton:
        request = r["n"] * ((2 if "float16 wire" in r["path"] else 4) * dim + 1)
        rate = request / r["p50"] / 1e9
        local = _in_process(rows, r["model"], r["n"])
        local_ms = f"{1e3 * local['p50']:.1f}" if local else "-"
        lines.append(
            f"| {r['model']} | {r['path']} | {r['n']:,} | {request / 1e6:.1f} | {1e3 * r['p50']:.1f} | "
            f"{rate:.2f} | {100 * rate / loopback:.0f}% | {local_ms} |"
        )
    return lines + [""]


def write_report(results: dict[str, Any], path: Path, plot_name: str = "throughput.png") -> Path:
    """Write the markdown report of a suite run."""
    machine = results["machine"]
    config = results["config"]
    top = ceiling(results)
    rows = _rows(results)
    lines = [
        "# milsdk benchmark results",
        "",
        f"Written by `{config.get('command') or 'milsdk bench'}` on {machine['date']} in {results['seconds']:.0f} s"
        + (" (**--quick smoke run: tiny sizes, not a measurement**)" if config.get("quick") else "") + ".",
        "",
        f"- Machine: {machine['cpu']}, {machine['cores']} logical cores, "
        f"{machine['memory_gb']:.0f} GB, flags {' '.join(machine['cpu_flags']) or 'none of note'}; "
        f"{machine['platform']}, Python {machine['python']}.",
        f"- Load average (1, 5, 15 min) at the start {', '.join(f'{x:.1f}' for x in machine['load_average'])}, "
        f"at the end {', '.join(f'{x:.1f}' for x in machine.get('load_average_end', []))}: on a machine shared "
        "with other work every figure is lower than a quiet machine's, the ceilings too (measured in the same run).",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()) + ".",
        f"- D = {config['dim']}, one bag per call, {config['repeats']} timed calls after {config['warmup']} "
        "untimed; p50 = median, p99 of those calls (with few calls, about the slowest); instances/s = N / p50.",
        "",
        "## Ceilings",
        "",
        "| runtime | float32 GEMM | GFLOP/s |",
        "|---|---|---:|",
    ]
    lines += [f"| {g['runtime']} | {g['shape']} | {g['gflops']:.1f} |" for g in results["gemm"]]
    lines += [
        "",
        f"Memory bandwidth (one large copy, bytes read + written): {results['bandwidth_gbs']:.1f} GB/s.",
        "",
        f"The ceiling for the tables below: **{top['gflops']:.1f} GFLOP/s** ({top['runtime']} on {top['shape']}, "
        "the shape of an attention MIL first layer). FLOPs per call are those of the model's matrix products, "
        "convolutions and attention as `torch.utils.flop_counter` counts them on the eager forward (2 per "
        "multiply-add; element-wise work not counted), the same count for every path of a model.",
        "",
        f"![instances/s against bag size]({plot_name})",
        "",
        "## Targets of issue 17",
        "",
        "| target | measured |",
        "|---|---|",
    ]
    lines += [f"| {t} | {m} |" for t, m in targets(results)]
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_model[r["model"]].append(r)
    lines += ["", "## Throughput per model and path", ""]
    for model, model_rows in by_model.items():
        lines += [f"### {model}", ""]
        lines += [f"- {note}" for note in results["notes"].get(model, [])]
        lines += ["", "| path | N | instances/s | p50 ms | p99 ms | GFLOP/s | % of ceiling | vs torchmil eager |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in model_rows:
            if not r.get("p50"):
                lines.append(f"| {r['path']} | {r['n']:,} | skipped: {r['skipped']} | | | | | |")
                continue
            ref = _find(rows, model, "eager torchmil", r["n"])
            versus = f"x{r['ips'] / ref['ips']:.2f}" if ref else "-"
            lines.append(
                f"| {r['path']} | {r['n']:,} | {r['ips']:,.0f} | {1e3 * r['p50']:.2f} | {1e3 * r['p99']:.2f} | "
                f"{r['gflops']:.1f} | {100 * r['gflops'] / top['gflops']:.0f}% | {versus} |"
            )
        lines.append("")
    lines += _transport_lines(results, rows)
    lines += [
        "## Client overhead over a default onnxruntime session",
        "",
        "The raw session runs the client's own padded batches, built before the clock starts; the two alternate "
        f"call by call, {config.get('settle_s', 0.05):g} s apart (a default session's threads spin on after its "
        "run). 'outside run' is the client's time outside `backend.run` against the raw time.",
        "",
        "| model | bags | instances | raw ms (p50) | client ms (p50) | overhead (p50) | overhead (fastest calls) "
        "| outside run |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {o['model']} | {o['bags']} | {o['instances']:,} | {1e3 * o['raw_s']:.2f} | {1e3 * o['client_s']:.2f} | "
        f"{100 * o['overhead']:+.1f}% | {100 * o.get('overhead_best', o['overhead']):+.1f}% | "
        f"{100 * o['outside_run']:+.1f}% |"
        for o in results["overhead"]
    ]
    lines += ["", "## Planner padding", "",
              "| setting | bags | requests | padded slots |", "|---|---:|---:|---:|"]
    lines += [f"| {p['setting']}: {p['max_instances']:,} slots, {p['max_batch_size']} bags | {p['bags']} | "
              f"{p['requests']} | {100 * p['padded_fraction']:.1f}% |" for p in results["planner"]]
    lines += ["", "Bag sizes: log-normal, median 3,000, sigma 0.75 (clipped to 1..100,000).", ""]
    lines += ["## Peak RSS of one bag (a fresh process per path)", "",
              "| model | path | N | bag GB | peak before the bag GB | peak GB | peak / bag |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for r in results["rss"]:
        if "peak" not in r:
            lines.append(f"| {r['model']} | {r['path']} | {r['n']:,} | {r['bag_bytes'] / 1e9:.2f} | "
                         f"{r.get('error', '')} | | |")
            continue
        lines.append(f"| {r['model']} | {r['path']} | {r['n']:,} | {r['bag_bytes'] / 1e9:.2f} | "
                     f"{r['peak_before_bag'] / 1e9:.2f} | {r['peak'] / 1e9:.2f} | {r['peak'] / r['bag_bytes']:.2f}x |")
    skipped = [r for r in rows if not r.get("p50")]
    lines += ["", "## Not measured", ""]
    missing = [f"- {r['model']}, {r['path']}, N={r['n']:,}: {r['skipped']}" for r in skipped]
    if not config.get("triton"):
        missing.append("- Triton HTTP / gRPC / shared memory: not run (pass --triton).")
    if results.get("not_run"):
        missing.append(f"- Registered models not in this run (--models): {', '.join(results['not_run'])}.")
    lines += missing or ["- nothing"]
    path = Path(path)
    kept = _sections_written_by_others(path, {line for line in lines if line.startswith("## ")})
    path.write_text("\n".join(lines) + "\n" + "".join("\n" + section for section in kept))
    return path


def _sections_written_by_others(path: Path, own_titles: set[str]) -> list[str]:
    """The ``## `` sections of an existing report that this writer does not produce (e.g. ``## Soak`` from
    benchmarks/soak.py), each as its text, so that a new suite run keeps them."""
    if not path.is_file():
        return []
    sections: list[list[str]] = []
    for line in path.read_text().splitlines(keepends=True):
        if line.startswith("## "):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
    return ["".join(section) for section in sections if section[0].rstrip("\n") not in own_titles]


def write_plot(results: dict[str, Any], path: Path) -> Path:
    """instances/s against bag size (log-log), one panel per model, one line per path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in _rows(results) if r.get("p50")]
    models = list(dict.fromkeys(r["model"] for r in rows)) or ["(nothing measured)"]
    cols = min(3, len(models))
    grid_rows = (len(models) + cols - 1) // cols
    fig, axes = plt.subplots(grid_rows, cols, figsize=(5 * cols, 3.6 * grid_rows), squeeze=False)
    for ax, model in zip(axes.flat, models):
        by_path: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for r in rows:
            if r["model"] == model:
                by_path[r["path"]].append((r["n"], r["ips"]))
        for name, points in by_path.items():
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(model)
        ax.set_xlabel("bag size N (instances)")
        ax.set_ylabel("instances / s")
        ax.grid(True, which="both", alpha=0.3)
        if by_path:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    fig.suptitle(f"D = {results['config']['dim']}, {results['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
