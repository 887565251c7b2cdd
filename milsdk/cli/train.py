"""``milsdk train``: train a registered model on a processed dataset folder (or the demo set) into a .ckpt."""

from __future__ import annotations

from pathlib import Path

import click


def _print_metrics(title: str, metrics: dict | None) -> None:
    if metrics:
        click.echo(f"{title:>5}: accuracy {metrics['accuracy']:.3f}  AUC {metrics['auroc']:.3f}  "
                   f"({metrics['n_bags']} bags)")


def _without_nproc(args: list[str]) -> list[str]:
    """The command line with its --nproc option removed (the launched processes each run one process)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


@click.command("train")
@click.argument("data_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--demo", is_flag=True, help="Train on the built-in demo dataset (bags of 8x8 digits; positive iff a 9).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to write (.ckpt).")
@click.option("--model", "model_name", default="ABMIL", show_default=True, help="Registered model name.")
@click.option("--set", "model_args", multiple=True, metavar="KEY=VALUE",
              help="Model constructor argument, e.g. --set att_dim=64 --set gated=true (repeatable).")
@click.option("--features", type=click.Path(path_type=Path), help="Features folder [DATA_DIR/features].")
@click.option("--labels", type=click.Path(path_type=Path), help="Labels folder [DATA_DIR/labels].")
@click.option("--coords", type=click.Path(path_type=Path), help="Coords folder [DATA_DIR/coords if present].")
@click.option("--ext", default=".npy", type=click.Choice([".npy", ".h5"]), show_default=True,
              help="File extension of the per-bag files.")
@click.option("--epochs", default=20, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1))
@click.option("--val-fraction", default=0.2, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option("--patience", default=None, type=click.IntRange(1), help="Early-stopping patience (epochs).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default=None, help="cpu, cuda or cuda:N [CUDA if available].")
@click.option("--class-names", default=None, help="Comma-separated class names stored in the checkpoint.")
@click.option("--feature-extractor", default=None, help="Name of the patch encoder (stored as metadata).")
@click.option("--nproc", default=1, show_default=True, type=click.IntRange(1),
              help="Processes on this machine (DDP through torchrun: one per GPU, gloo on CPU).")
def train(data_dir, demo, out, model_name, model_args, features, labels, coords, ext, epochs, lr, batch_size,
          val_fraction, patience, seed, device, class_names, feature_extractor, nproc) -> None:
    """Train a MIL model and save the best epoch as a checkpoint.

    DATA_DIR holds one folder per key with one file per bag (features/<bag>.npy, labels/<bag>.npy and
    optionally coords/<bag>.npy), the layout of milsdk.datasets.ProcessedMILDataset. Every bag is read and
    checked before the first epoch. Labels are class indices: {0, 1} trains a binary model, 0..C-1 a C-class
    model (or give --set n_classes=C); --class-names needs one name per class (2 for binary).

    Ctrl-C stops training, saves the best finished epoch to --out and exits with code 130.

    \b
    Examples:
      milsdk train --demo --out abmil.ckpt
      milsdk train data/camelyon16 --model TransMIL --set att_dim=256 --epochs 50 --out transmil.ckpt
      milsdk train data/camelyon16 --nproc 4 --out abmil.ckpt     # DDP on 4 GPUs (or 4 CPU processes)
    """
    if nproc > 1:
        import sys

        from milsdk.utils.distributed import launch

        args = _without_nproc(sys.argv[sys.argv.index("train") + 1 :])
        raise SystemExit(launch(nproc, ["-m", "milsdk.cli", "train", *args]))
    from milsdk.errors import DatasetError, ModelConfigError
    from milsdk.models import get_model_class
    from milsdk.utils.training_run import check_class_names, check_training_set, parse_model_args, train_model

    try:
        config = parse_model_args(model_args)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--set") from None
    cls = get_model_class(model_name)
    test_set = None
    if demo:
        from milsdk.datasets import DigitsMILDataset

        train_set = DigitsMILDataset(num_bags=400, train=True, seed=seed)
        test_set = DigitsMILDataset(num_bags=150, train=False, seed=seed + 1)
        names = ["no 9", "has a 9"]
    else:
        if data_dir is None and (features is None or labels is None):
            raise click.UsageError("give DATA_DIR (or --features and --labels), or --demo")
        from milsdk.datasets import ProcessedMILDataset

        features = features or data_dir / "features"
        labels = labels or data_dir / "labels"
        if coords is None and data_dir is not None and (data_dir / "coords").is_dir():
            coords = data_dir / "coords"
        needs = set(getattr(cls, "extra_inputs", ()))
        if needs and coords is None:
            raise DatasetError(f"model {cls.__name__} needs {sorted(needs)}, built from coords: give --coords")
        keys = ["X", "Y"] + (["coords"] if "coords" in needs else []) + (["adj"] if "adj" in needs else [])
        train_set = ProcessedMILDataset(features_path=str(features), labels_path=str(labels),
                                        coords_path=str(coords) if coords else None, bag_keys=keys,
                                        file_ext=ext, load_at_init=False, verbose=False)
        names = None
    # every bag is read once before the first epoch: a bad bag fails now, not epochs in
    found = check_training_set(train_set, config.get("n_classes"))
    if test_set is not None:
        check_training_set(test_set, found.n_classes, what="test set")
    if found.n_classes > 1:
        config["n_classes"] = found.n_classes
    if class_names:
        names = [n.strip() for n in class_names.split(",")]
        try:
            check_class_names(names, found.n_classes)
        except ModelConfigError as exc:
            raise click.BadParameter(f"{exc} ({found.describe()})", param_hint="--class-names") from None
    metadata = {"class_names": names or [], "feature_extractor": feature_extractor or ("digits-8x8" if demo else "")}
    click.echo(f"training {cls.__name__} on {len(train_set)} bags, {found.describe()}, for up to {epochs} epochs")
    run = train_model(train_set, model_name=model_name, model_config=config, test_set=test_set,
                      val_fraction=val_fraction, epochs=epochs, lr=lr, batch_size=batch_size,
                      early_stop_patience=patience, device=device, seed=seed, checkpoint_path=out,
                      checkpoint_metadata=metadata, check_data=False)
    if run.checkpoint is None:  # a rank other than 0 under torchrun: rank 0 reports
        return
    click.echo(f"best epoch {run.best_epoch} of {len(run.history)} ({run.seconds:.1f} s)")
    _print_metrics("val", run.val_metrics)
    _print_metrics("test", run.test_metrics)
    click.echo(f"checkpoint: {run.checkpoint}")
