"""``milsdk inspect``: show an artifact's inputs, outputs, dynamic axes and milsdk metadata."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("inspect")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def inspect_artifact(artifact: Path, as_json: bool) -> None:
    """Show the inputs, outputs (names, dtypes, dims with symbolic names), dynamic axes and milsdk metadata of
    an
    exported .onnx or .pt file.

    \b
    Example:
      milsdk inspect exports/abmil/model.onnx
    """
    from milsdk.export.artifact import describe_artifact

    description = describe_artifact(artifact)
    click.echo(json.dumps(description.to_dict(), indent=2) if as_json else description.to_text())
