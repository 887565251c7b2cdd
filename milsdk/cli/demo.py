"""``milsdk demo``: the main job on the embedded demo dataset (train -> export -> predict)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--out-dir", default=Path("demo_out"), show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where the checkpoint, exports, Triton repository, bag files and heatmaps go.")
@click.option("--epochs", default=15, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
def demo(out_dir: Path, epochs: int, seed: int) -> None:
    """Train ABMIL on bags of 8x8 digit images, export it (ONNX + TorchScript, verified) and predict with it.

    \b
    Example:
      milsdk demo --out-dir demo_out
    """
    from milsdk.demo import run_demo

    run_demo(out_dir=out_dir, epochs=epochs, seed=seed, echo=click.echo)
