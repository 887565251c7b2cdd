"""``milsdk convert``: turn a model trained with another library into a milsdk checkpoint."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("convert")
def convert() -> None:
    """Convert a model trained with another library into a milsdk checkpoint (then `milsdk export` it)."""


@convert.command("torchmil")
@click.argument("weights", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", "model_name", required=True, help="Model name, the same in torchmil and milsdk (e.g. ABMIL).")
@click.option("--set", "model_args", multiple=True, metavar="KEY=VALUE",
              help="torchmil constructor argument the model was built with, e.g. --set att_dim=64 (repeatable).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to write (.ckpt).")
@click.option("--trust", is_flag=True,
              help="Allow a file holding a pickled model object (loading it runs code from the file).")
@click.option("--class-names", default=None, help="Comma-separated class names stored in the checkpoint.")
def convert_torchmil(weights: Path, model_name: str, model_args: tuple[str, ...], out: Path, trust: bool,
                     class_names: str | None) -> None:
    """Convert a torchmil 1.0.2 model (its state_dict .pth) into a milsdk checkpoint with the same outputs.

    WEIGHTS is a file written by torch.save(model.state_dict(), ...). A file holding a pickled model
    (torch.save(model, ...)) is refused unless --trust is given, because reading it runs code from the file.
    Give the constructor arguments the torchmil model was built with through --set (in_shape is read from
    the weights where they determine it).

    \b
    Examples:
      milsdk convert torchmil abmil.pth --model ABMIL --out abmil.ckpt
      milsdk convert torchmil transmil.pth --model TransMIL --set in_shape=1024 --set att_dim=256 --out t.ckpt
      milsdk export abmil.ckpt
    """
    from milsdk.models.from_torchmil import from_torchmil
    from milsdk.utils.checkpoint import save_checkpoint
    from milsdk.utils.training_run import parse_model_args

    try:
        config = parse_model_args(model_args)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--set") from None
    model = from_torchmil(weights, model_name, trust=trust, **config)
    metadata = {"source": f"torchmil:{weights.name}"}
    if class_names:
        metadata["class_names"] = [n.strip() for n in class_names.split(",")]
    path = save_checkpoint(model, out, **metadata)
    click.echo(f"converted torchmil {model_name} from {weights} -> {path}")
