"""One call from a dataset to a trained, evaluated and saved model: what ``milsdk train`` and the demo run.

The Trainer does the epochs; this module adds the decisions a command-line run needs: the validation split, the
data loaders, the model from the registry, the final evaluation and the checkpoint with its training summary.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from milsdk.data import collate_fn
from milsdk.errors import DatasetError, ModelConfigError, TrainingInterrupted
from milsdk.models import create_model
from milsdk.utils.checkpoint import save_checkpoint
from milsdk.utils.metrics import AUROC, Accuracy
from milsdk.utils.trainer import Trainer

__all__ = [
    "DatasetSummary",
    "TrainingRun",
    "check_class_names",
    "check_training_set",
    "evaluate_model",
    "split_dataset",
    "train_model",
]

_logger = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    """What :func:`train_model` produced."""

    model: torch.nn.Module
    history: list[dict[str, float]]
    val_metrics: dict[str, float]
    test_metrics: dict[str, float] | None
    best_epoch: int
    seconds: float
    checkpoint: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class DatasetSummary:
    """What :func:`check_training_set` found: every bag readable and finite, the labels class indices.

    Attributes:
        n_bags: bags checked.
        n_classes: model outputs the labels need: 1 (binary, labels 0 / 1) or C (labels 0 .. C-1).
        class_counts: bags per label value, labels ascending.
        inferred: True when ``n_classes`` came from the labels (the caller did not give it).
    """

    n_bags: int
    n_classes: int
    class_counts: dict[int, int]
    inferred: bool

    def describe(self) -> str:
        """``labels 0..2: 3 classes (8, 8, 8 bags)``."""
        labels = sorted(self.class_counts)
        counts = ", ".join(str(self.class_counts[c]) for c in labels)
        kind = "binary" if self.n_classes == 1 else f"{self.n_classes} classes"
        return f"labels {labels[0]}..{labels[-1]}: {kind} ({counts} bags)"


def _bag_label(dataset: Dataset, index: int) -> str:
    names = getattr(dataset, "get_bag_names", None)
    return f"bag '{names()[index]}'" if callable(names) else f"bag {index}"


def check_training_set(
    dataset: Dataset, n_classes: int | None = None, what: str = "training set"
) -> DatasetSummary:
    """Read every bag once, before the first epoch, so that a bad bag fails the run at once and not epochs in.

    Each bag must be readable, hold at least one instance, finite features and one label that is a class index:
    0 / 1 for a binary model (``n_classes`` 1), 0 .. C-1 for C classes. Without ``n_classes`` the number of
    classes is inferred from the labels: {0, 1} gives a binary model, a largest label C-1 >= 2 gives C classes.

    Args:
        dataset: bags with ``X`` (N, ...) and ``Y``; a dataset with ``get_bag_names()`` names its bags in errors.
        n_classes: the model's outputs (1 = binary), or None to infer them.
        what: how errors name the dataset ("training set", "validation set", ...).

    Returns:
        A :class:`DatasetSummary`.

    Raises:
        DatasetError: one line naming the bag (or its file) and what is wrong with it.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise DatasetError(f"{what} has no bags")
    counts: dict[int, int] = {}
    first: dict[int, int] = {}  # label -> the first bag that has it, to name it in an error
    for index in range(n):
        bag = dataset[index]  # a dataset names the file of a bag it cannot read
        X = torch.as_tensor(bag["X"])
        Y = bag["Y"] if "Y" in bag.keys() else None
        if X.dim() == 0 or X.shape[0] == 0:
            raise DatasetError(f"{what}: {_bag_label(dataset, index)} has 0 instances")
        if X.is_floating_point() and not bool(torch.isfinite(X).all()):
            raise DatasetError(f"{what}: {_bag_label(dataset, index)} has NaN or inf features")
        if Y is None:
            raise DatasetError(f"{what}: {_bag_label(dataset, index)} has no label")
        Y = torch.as_tensor(Y)
        if Y.numel() != 1:
            raise DatasetError(
                f"{what}: {_bag_label(dataset, index)} has a label of shape {tuple(Y.shape)}, "
                "expected one class index"
            )
        value = float(Y.reshape(()))
        if not value.is_integer() or value < 0:
            raise DatasetError(
                f"{what}: {_bag_label(dataset, index)} has label {value:g}, expected a class index 0, 1, ..."
            )
        label = int(value)
        counts[label] = counts.get(label, 0) + 1
        first.setdefault(label, index)
    largest = max(counts)
    inferred = n_classes is None
    if n_classes is None:
        n_classes = 1 if largest <= 1 else largest + 1
    n_labels = 2 if n_classes == 1 else int(n_classes)
    if largest >= n_labels:
        kind = "a binary model (labels 0 and 1)" if n_classes == 1 else f"{n_classes} classes (labels 0..{n_classes - 1})"
        raise DatasetError(
            f"{what}: {_bag_label(dataset, first[largest])} has label {largest}, outside the model's classes: "
            f"n_classes={n_classes} is {kind}; leave n_classes unset to infer it from the labels"
        )
    return DatasetSummary(n, int(n_classes), dict(sorted(counts.items())), inferred)


def check_class_names(class_names: Sequence[str] | None, n_classes: int) -> None:
    """Class names must be one per class: 2 (negative, positive) for a binary model, C for C classes.

    Raises:
        ModelConfigError: naming the count given and the count needed.
    """
    if not class_names:
        return
    needed = 2 if n_classes == 1 else n_classes
    if len(class_names) != needed:
        kind = "a binary model needs 2 (negative, positive)" if n_classes == 1 else f"a {needed}-class model needs {needed}"
        raise ModelConfigError(
            f"class_names has {len(class_names)} names ({', '.join(map(str, class_names))}); {kind}"
        )


def split_dataset(dataset: Dataset, val_fraction: float, seed: int = 0) -> tuple[Dataset, Dataset | None]:
    """Random split into (train, val) with ``round(val_fraction * len)`` validation bags (at least 1 if > 0)."""
    n = len(dataset)  # type: ignore[arg-type]
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    if n_val == 0:
        return dataset, None
    if n - n_val < 1:
        raise DatasetError(f"dataset has {n} bags, too few to hold out {n_val} for validation")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, order[n_val:]), Subset(dataset, order[:n_val])


def _loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_fn, generator=generator)


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module, dataset: Dataset, batch_size: int = 8, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Accuracy and AUROC of a model on a dataset (eval mode, no grad).

    Args:
        model: a MIL model; logits (B,) or (B, C).
        dataset: bags with ``X`` and ``Y``.

    Returns:
        {"accuracy", "auroc", "n_bags"}.
    """
    from milsdk.models import MILModelWrapper

    wrapper = MILModelWrapper(model).to(device).eval()
    accuracy, auroc = Accuracy(), AUROC()
    for metric in (accuracy, auroc):
        metric.sync_across_ranks = False  # the whole dataset is seen by this process
    n = 0
    for batch in _loader(dataset, batch_size, shuffle=False, seed=0):
        batch = batch.to(device)
        logits = wrapper(batch)
        accuracy.update(logits, batch["Y"])
        auroc.update(logits, batch["Y"])
        n += int(batch["Y"].shape[0])
    return {"accuracy": float(accuracy.compute()), "auroc": float(auroc.compute()), "n_bags": n}


def train_model(
    train_set: Dataset,
    *,
    model_name: str = "ABMIL",
    model_config: Mapping[str, Any] | None = None,
    val_set: Dataset | None = None,
    val_fraction: float = 0.2,
    test_set: Dataset | None = None,
    epochs: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 1,
    early_stop_patience: int | None = None,
    obj_metric: str = "auroc",
    device: str | None = None,
    seed: int = 0,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_metadata: Mapping[str, Any] | None = None,
    progress: bool = True,
    check_data: bool = True,
) -> TrainingRun:
    """Train a registered model on a dataset, keep the best epoch, evaluate it, and optionally save it.

    Args:
        train_set: bags with ``X`` (N, D), ``Y`` and whatever extra keys the model needs.
        model_name: registered model name; ``model_config`` its constructor arguments. ``in_shape`` is taken from
            the first bag when not given, ``n_classes`` from the labels (see :func:`check_training_set`).
        val_set: validation bags; None = hold out ``val_fraction`` of ``train_set``.
        test_set: optional held-out bags, evaluated once at the end with the best weights.
        epochs, lr, weight_decay, batch_size, early_stop_patience: training settings (Adam).
        obj_metric: validation metric that picks the best epoch ('auroc', 'accuracy' or 'loss').
        device: None = CUDA if available else CPU.
        seed: seeds the model initialisation, the split and the shuffling.
        checkpoint_path: where to save the best model (with a training summary in its metadata).
        progress: show the Trainer's progress bar.
        check_data: read every bag before the first epoch (:func:`check_training_set`); False when the caller
            already did.

    Returns:
        A :class:`TrainingRun` with the best model (eval mode), history and metrics.

    Raises:
        DatasetError: a bag that cannot be read, is empty, holds NaN / inf or a label outside the classes.
        ModelConfigError: ``class_names`` in the metadata that are not one per class.
        TrainingInterrupted: Ctrl-C during training; the best epoch so far is saved to ``checkpoint_path`` first
            (atomically) when one has finished.
    """
    torch.manual_seed(seed)
    config = dict(model_config or {})
    if check_data:
        found = check_training_set(train_set, config.get("n_classes"))
        if found.n_classes > 1:
            config["n_classes"] = found.n_classes
        for name, extra in (("validation set", val_set), ("test set", test_set)):
            if extra is not None:
                check_training_set(extra, found.n_classes, what=name)
    check_class_names((checkpoint_metadata or {}).get("class_names"), int(config.get("n_classes", 1)))
    if val_set is None:
        train_set, val_set = split_dataset(train_set, val_fraction, seed)
    if "in_shape" not in config:
        config["in_shape"] = tuple(int(s) for s in train_set[0]["X"].shape[1:])
    model = create_model(model_name, **config)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    trainer = Trainer(
        model,
        optimizer,
        obj_metric=obj_metric,
        obj_metric_mode="min" if obj_metric == "loss" else "max",
        device=device,
        early_stop_patience=early_stop_patience,
        disable_pbar=not progress,
        verbose=False,
    )
    start = time.perf_counter()
    try:
        trainer.train(
            epochs,
            _loader(train_set, batch_size, shuffle=True, seed=seed),
            val_dataloader=_loader(val_set, batch_size, shuffle=False, seed=seed) if val_set is not None else None,
        )
    except KeyboardInterrupt:
        _save_interrupted(trainer, checkpoint_path, checkpoint_metadata, obj_metric, time.perf_counter() - start)
    seconds = time.perf_counter() - start
    model = trainer.get_best_model().eval()
    trainer.close()
    if not trainer.ctx.is_main:  # under torchrun, rank 0 alone evaluates and writes the checkpoint
        return TrainingRun(model.cpu(), trainer.history, {}, None, trainer.best_epoch, seconds)
    val_metrics = evaluate_model(model, val_set if val_set is not None else train_set, device=trainer.device)
    test_metrics = evaluate_model(model, test_set, device=trainer.device) if test_set is not None else None
    summary = {
        "epochs_run": len(trainer.history),
        "best_epoch": trainer.best_epoch,
        "obj_metric": obj_metric,
        "val": val_metrics,
        "test": test_metrics,
        "n_train_bags": len(train_set),  # type: ignore[arg-type]
        "seconds": round(seconds, 2),
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
    }
    run = TrainingRun(model.cpu(), trainer.history, val_metrics, test_metrics, trainer.best_epoch, seconds,
                      summary=summary)
    if checkpoint_path is not None:
        metadata = {**dict(checkpoint_metadata or {}), "training": summary}
        run.checkpoint = save_checkpoint(run.model, checkpoint_path, **metadata)
    return run


def _save_interrupted(
    trainer: Trainer,
    checkpoint_path: str | os.PathLike | None,
    metadata: Mapping[str, Any] | None,
    obj_metric: str,
    seconds: float,
) -> None:
    """After Ctrl-C: save the best finished epoch (if any) and raise TrainingInterrupted saying where it is."""
    trainer.close()
    where = f"training stopped in epoch {trainer.epoch}"
    if not trainer.history or not trainer.ctx.is_main:
        raise TrainingInterrupted(f"{where}, before any epoch finished: nothing saved") from None
    if checkpoint_path is None:
        raise TrainingInterrupted(f"{where}; no checkpoint path was given: nothing saved") from None
    model = trainer.get_best_model().eval().cpu()
    summary = {
        "interrupted_in_epoch": trainer.epoch,
        "epochs_run": len(trainer.history),
        "best_epoch": trainer.best_epoch,
        "obj_metric": obj_metric,
        f"val_{obj_metric}": trainer.best_obj_metric,
        "seconds": round(seconds, 2),
    }
    # save_checkpoint renames a finished temporary file: a second Ctrl-C during the save leaves no partial file
    path = save_checkpoint(model, checkpoint_path, **{**dict(metadata or {}), "training": summary})
    best = (
        f"epoch {trainer.best_epoch}, val {obj_metric} {trainer.best_obj_metric:.3f}"
        if trainer.best_epoch >= 1
        else f"the initial weights: val {obj_metric} never improved"  # what a finished run would save too
    )
    raise TrainingInterrupted(f"{where}; best checkpoint so far ({best}) saved to {path}", checkpoint=path) from None


def parse_model_args(pairs: Sequence[str]) -> dict[str, Any]:
    """``["att_dim=64", "gated=true", "in_shape=1024"]`` -> {"att_dim": 64, "gated": True, "in_shape": (1024,)}."""
    import json

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"model argument {pair!r} is not KEY=VALUE")
        try:
            value = json.loads(raw.lower() if raw.lower() in ("true", "false", "null") else raw)
        except ValueError:
            value = raw
        if key == "in_shape" and isinstance(value, int):
            value = (value,)
        out[key] = tuple(value) if key == "in_shape" and isinstance(value, list) else value
    return out
