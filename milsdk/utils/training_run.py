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
from milsdk.errors import DatasetError
from milsdk.models import create_model
from milsdk.utils.checkpoint import save_checkpoint
from milsdk.utils.metrics import AUROC, Accuracy
from milsdk.utils.trainer import Trainer

__all__ = ["TrainingRun", "train_model", "evaluate_model", "split_dataset"]

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
) -> TrainingRun:
    """Train a registered model on a dataset, keep the best epoch, evaluate it, and optionally save it.

    Args:
        train_set: bags with ``X`` (N, D), ``Y`` and whatever extra keys the model needs.
        model_name: registered model name; ``model_config`` its constructor arguments. ``in_shape`` is taken from
            the first bag when not given.
        val_set: validation bags; None = hold out ``val_fraction`` of ``train_set``.
        test_set: optional held-out bags, evaluated once at the end with the best weights.
        epochs, lr, weight_decay, batch_size, early_stop_patience: training settings (Adam).
        obj_metric: validation metric that picks the best epoch ('auroc', 'accuracy' or 'loss').
        device: None = CUDA if available else CPU.
        seed: seeds the model initialisation, the split and the shuffling.
        checkpoint_path: where to save the best model (with a training summary in its metadata).
        progress: show the Trainer's progress bar.

    Returns:
        A :class:`TrainingRun` with the best model (eval mode), history and metrics.
    """
    torch.manual_seed(seed)
    if val_set is None:
        train_set, val_set = split_dataset(train_set, val_fraction, seed)
    config = dict(model_config or {})
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
    trainer.train(
        epochs,
        _loader(train_set, batch_size, shuffle=True, seed=seed),
        val_dataloader=_loader(val_set, batch_size, shuffle=False, seed=seed) if val_set is not None else None,
    )
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
