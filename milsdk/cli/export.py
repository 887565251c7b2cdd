"""``milsdk export``: a thin layer over :func:`milsdk.export.api.export_checkpoint` (parsing, progress, exit
codes)."""

from __future__ import annotations

import itertools
from pathlib import Path

import click


@click.command("export")
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "torchscript", "all"]),
    default=None,
    help="Artifacts to write. Default: the profile's (cpu: all).",
)
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Output folder [exports/NAME].")
@click.option(
    "--triton",
    "triton_repo",
    type=click.Path(path_type=Path),
    help="Also add the model to this Triton model repository.",
)
@click.option("--name", help="Model name (Triton model and folder name) [from the checkpoint file name].")
@click.option(
    "--version",
    "model_version",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Triton model version.",
)
@click.option("--opset", type=click.IntRange(13, 24), help="ONNX opset [the profile's, 18].")
@click.option(
    "--max-batch-size", type=click.IntRange(min=1), help="Triton max_batch_size [the profile's, 8]."
)
@click.option(
    "--profile",
    default="cpu",
    show_default=True,
    help="Profile name (cpu, cpu-bf16, cpu-int8, cpu-int8-vnni, gpu-fp16, triton-python, triton-python-wire16, "
    "triton-pytorch) or path to a .toml profile.",
)
@click.option(
    "--accuracy-bags",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Held-out feature files or folders (.npy / .h5) for the accuracy report of an int8 / float16 export "
    "(repeatable) [synthetic bags].",
)
def export(
    ckpt: Path,
    fmt: str | None,
    output: Path | None,
    triton_repo: Path | None,
    name: str | None,
    model_version: int,
    opset: int | None,
    max_batch_size: int | None,
    profile: str,
    accuracy_bags: tuple[Path, ...],
) -> None:
    """Export a checkpoint to ONNX / TorchScript, verify it against PyTorch, optionally add it to a Triton
    repository.

    Nothing is written unless every artifact passes verification (parity with eager PyTorch at batch sizes 1-8
    and bag sizes 1-5000, padding invariance, finite one-instance bags); the report is written beside the
    artifacts (verification.json / verification.md). A reduced-precision export (--profile cpu-int8, cpu-bf16, gpu-fp16)
    also writes accuracy.json / accuracy.md: probability change and attention rank correlation against float32
    on the --accuracy-bags, and fails if the profile's limits are missed.

    \b
    Examples:
      milsdk export abmil.ckpt
      milsdk export abmil.ckpt --format onnx --triton model_repository --version 2
      milsdk export abmil.ckpt --profile gpu-fp16 --triton model_repository
      milsdk export abmil.ckpt --profile cpu-int8 --accuracy-bags held_out_slides/
      milsdk export abmil.ckpt --profile cpu-bf16 --accuracy-bags held_out_slides/
      milsdk export abmil.ckpt --profile triton-python --triton model_repository
    """
    from milsdk.export.api import default_name, export_checkpoint

    name = name or default_name(ckpt)
    formats = None if fmt is None else (("onnx", "torchscript") if fmt == "all" else (fmt,))
    steps = itertools.count(1)
    result = export_checkpoint(
        ckpt,
        output or Path("exports") / name,
        formats,
        triton_repo=triton_repo,
        name=name,
        version=model_version,
        opset=opset,
        max_batch_size=max_batch_size,
        profile=profile,
        progress=lambda message: click.echo(f"[{next(steps)}] {message}", err=True),
        accuracy_bags=list(accuracy_bags) or None,
    )
    click.echo(result.table())
    click.echo(f"verification report: {result.reports[1]}")
    if result.accuracy is not None:
        click.echo(f"accuracy report: {result.output_dir / 'accuracy.md'}: {result.accuracy.summary()}")
    if result.triton_dir is not None:
        click.echo(f"Triton model: {result.triton_dir} ({result.profile.triton_backend} backend)")
