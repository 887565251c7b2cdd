"""``milsdk bench``: the benchmark suite (:mod:`milsdk.bench`), whole or in part."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        sizes = [int(v.replace("_", "")) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"{value!r}: give one or more bag sizes >= 1")
    return sizes


def _name_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    from milsdk.models import list_models

    names = [v.strip() for v in value.split(",") if v.strip()]
    by_lower = {n.lower(): n for n in list_models()}
    unknown = [n for n in names if n.lower() not in by_lower]
    if unknown or not names:
        given = ", ".join(unknown) if unknown else repr(value)
        raise click.BadParameter(f"unknown model(s) {given}; registered: {', '.join(list_models())}")
    return [by_lower[n.lower()] for n in names]


def _command_line() -> str:
    """The command as typed, for the report ("milsdk bench ..." or "python benchmarks/run.py ...")."""
    program = Path(sys.argv[0]).name if sys.argv else "milsdk"
    if program in ("milsdk", "__main__.py"):
        return shlex.join(["milsdk", *sys.argv[1:]])
    return shlex.join(["python", sys.argv[0], *sys.argv[1:]])


@click.command("bench")
@click.option("--models", callback=_name_list, help="Comma-separated registered models [all; --quick: ABMIL,TransMIL].")
@click.option("--sizes", callback=_int_list,
              help="Comma-separated bag sizes N [1000,4000,16000,64000,100000; --quick: 64,256].")
@click.option("--dim", type=click.IntRange(1), default=None, help="Feature dimension D [1024; --quick: 64].")
@click.option("--repeats", type=click.IntRange(1), default=None, help="Timed calls per measurement [5; --quick: 3].")
@click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Skip a measurement estimated to take longer (it is listed in the report) [30; --quick: 10].")
@click.option("--quick", is_flag=True, help="A smoke run of seconds: tiny sizes, 2 small models.")
@click.option("--triton", is_flag=True, help="Also Triton HTTP / gRPC / shared memory (starts a real server).")
@click.option("--rss/--no-rss", default=True, show_default=True,
              help="Peak RSS of one bag per path, each in a fresh process.")
@click.option("--rss-size", type=click.IntRange(1), default=None,
              help="Bag size of the peak-RSS measurements [the largest size measured].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("bench_results"),
              show_default=True, help="Folder for RESULTS.md, throughput.png and results.json.")
def bench(models: list[str] | None, sizes: list[int] | None, dim: int | None, repeats: int | None,
          max_seconds: float | None, quick: bool, triton: bool, rss: bool, rss_size: int | None,
          out_dir: Path) -> None:
    """Measure every path a model runs on, side by side: eager milsdk, eager torchmil, TorchScript, onnxruntime
    through MILClient and raw, Triton with --triton; against the machine's GEMM ceiling and memory bandwidth,
    with latency p50/p99, peak RSS, planner padding and the client's overhead. Writes OUT/RESULTS.md,
    OUT/throughput.png and OUT/results.json. Timings are this machine's under its current load.

    \b
    Examples:
      milsdk bench --quick --out /tmp/bench
      milsdk bench --models ABMIL,TransMIL --sizes 1000,4000,16000 --out benchmarks
      milsdk bench --models ABMIL --triton
    """
    from milsdk.bench import SuiteConfig, quick_config, run_suite

    overrides = dict(models=models, sizes=sizes, dim=dim, repeats=repeats, max_seconds=max_seconds,
                     triton=triton, rss=rss, rss_size=rss_size, command=_command_line())
    if quick:
        config = quick_config(out_dir, **overrides)
    else:
        config = SuiteConfig(out_dir=out_dir, **{k: v for k, v in overrides.items() if v is not None})
    run_suite(config, echo=click.echo)
