"""The Trainer: a torchmil-compatible training loop for MIL models, single-process or data-parallel.

Per epoch: a train loop (``model.train()``), a validation loop and, if given, a test loop (both
``model.eval()`` under ``torch.no_grad()``, unlike the reference, which evaluates in train mode with
gradients), one ``lr_scheduler.step()``, best-model tracking on ``val/<obj_metric>`` (strict improvement) and
early stopping.

Each batch (a ``TensorDict`` from :func:`milsdk.data.collate_fn`, or any mapping) goes through
:class:`milsdk.models.MILModelWrapper`, which passes the keys the model's ``compute_loss`` takes (``X``,
``Y``, ``mask``, ``adj``, ``coords``). The loss minimised is ``Σ coef_name · loss_name`` over the model's loss
dict, ``coef_name`` coming from ``annealing_scheduler_dict[name]()`` (1 without a scheduler).

Under ``torchrun`` the same script trains with DistributedDataParallel: see :mod:`milsdk.utils.distributed`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from milsdk.models.mil_model import MILModelWrapper
from milsdk.utils.annealing import AnnealingScheduler
from milsdk.utils.checkpoint import save_checkpoint
from milsdk.utils.distributed import (
    DistributedContext,
    broadcast_flag,
    setup_distributed,
    shard_dataloader,
    teardown_distributed,
)
from milsdk.utils.metrics import Mean, default_metrics

__all__ = ["Trainer"]

_logger = logging.getLogger(__name__)

_MODES = ("train", "val", "test")


class _LossModule(torch.nn.Module):
    """``forward(bag) -> (logits, losses)``: what DDP wraps, so that gradient synchronisation is armed by the
    call that computes the loss."""

    def __init__(self, wrapper: MILModelWrapper) -> None:
        super().__init__()
        self.wrapper = wrapper

    def forward(self, bag: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.wrapper.compute_loss(bag)


def _resolve_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    """The training device: CUDA (this process's GPU under torchrun) when available, else CPU; an explicit
    CUDA device without CUDA falls back to CPU with a warning."""
    cuda = torch.cuda.is_available()
    if device is None:
        device = "cuda" if cuda else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not cuda:
        _logger.warning("device %r requested but CUDA is not available: training on the CPU", str(device))
        return torch.device("cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return device


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor) or hasattr(batch, "batch_size"):  # tensor or TensorDict
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _as_float(value: Any) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


def _length(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


class Trainer:
    """Train a MIL model: metrics, best-model tracking, early stopping, schedulers, logging, DDP.

    Args:
        model: the model (a :class:`milsdk.models.MILModel`, or any module with ``forward(X, ...)`` and
            ``compute_loss(Y, X, ...) -> (logits, {name: loss})``).
        optimizer: optimizer over ``model.parameters()``.
        metrics_dict: ``{name: metric}``; each metric has ``update(logits, Y)``, ``compute()``, ``reset()``
            (milsdk.utils.metrics objects or torchmetrics objects). Default: accuracy and AUROC.
            Metrics receive raw logits (B,) / (B, C) and are moved to the device.
        obj_metric: the key of the validation log that selects the best model: a metric name, ``'loss'`` or a
            loss name.
        obj_metric_mode: ``'max'`` or ``'min'``.
        lr_scheduler: stepped once per epoch (``ReduceLROnPlateau`` receives the objective value).
        annealing_scheduler_dict: ``{loss_name: AnnealingScheduler}``, stepped once per optimizer step.
        device: None = CUDA if available else CPU; ``'cuda'`` without CUDA falls back to CPU with a warning.
            Under torchrun, ``'cuda'`` means this process's GPU (``LOCAL_RANK``).
        logger: any object with ``.log(dict)`` (e.g. a wandb run), called once per loop (rank 0 only) with
            ``'{mode}/loss'``, ``'{mode}/{loss_name}'`` and ``'{mode}/{metric}'``, mode in train / val / test.
        early_stop_patience: stop after this many consecutive epochs without improvement (None = never).
        disable_pbar: no tqdm progress bar.
        verbose: log the objective and the early-stopping count each epoch (logging, level INFO).
        distributed: None = DDP when launched by torchrun (or in an initialised process group); True = require
            it; False = never. Under DDP a DataLoader built with ``shuffle=True/False`` is rebuilt with a
            ``DistributedSampler`` for training and an exact, non-repeating split for validation / test; a
            loader whose sampler or batch sampler knows the replicas (``DistributedSampler``,
            ``SizeAwareBatchSampler``) is used as it is; a custom sampler that does not raises TypeError.
        amp_dtype: autocast dtype for the forward pass and loss (``torch.bfloat16``; ``torch.float16`` adds
            gradient scaling); None = full precision.
        grad_accum_steps: batches whose gradients are summed per optimizer step (losses are divided by the
            number of batches in the step, so the update is that of their mean).
        checkpoint_path: when given, the best model is written there with :func:`milsdk.save_checkpoint` each
            time it improves (rank 0 only); needs a registered milsdk model.
        seed: shuffling seed of the samplers the Trainer creates for DDP (the same on every rank).
        ddp_kwargs: extra keyword arguments of ``DistributedDataParallel`` (e.g. ``find_unused_parameters``).

    Attributes:
        model: the (unwrapped) model being trained.
        history: one dict per epoch: ``epoch`` and every value passed to the logger that epoch.
        best_obj_metric: best validation objective so far; ``best_epoch``: its epoch (0 = initial weights).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        metrics_dict: Mapping[str, Any] | None = None,
        obj_metric: str = "accuracy",
        obj_metric_mode: str = "max",
        lr_scheduler: Any = None,
        annealing_scheduler_dict: Mapping[str, AnnealingScheduler] | None = None,
        device: str | torch.device | None = None,
        logger: Any = None,
        early_stop_patience: int | None = None,
        disable_pbar: bool = False,
        verbose: bool = True,
        distributed: bool | None = None,
        amp_dtype: torch.dtype | None = None,
        grad_accum_steps: int = 1,
        checkpoint_path: str | os.PathLike | None = None,
        seed: int = 0,
        ddp_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if obj_metric_mode not in ("max", "min"):
            raise ValueError(f"obj_metric_mode must be 'max' or 'min', got {obj_metric_mode!r}")
        if grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
        if early_stop_patience is not None and early_stop_patience < 1:
            raise ValueError(f"early_stop_patience must be >= 1 or None, got {early_stop_patience}")
        if amp_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"amp_dtype must be None, torch.bfloat16 or torch.float16, got {amp_dtype}")
        if checkpoint_path is not None and not hasattr(type(model), "model_name"):
            raise ValueError(
                f"checkpoint_path needs a registered milsdk model, got {type(model).__name__}; "
                "save trainer.get_best_model_state_dict() yourself instead"
            )
        for name, metric in (metrics_dict or {}).items():
            if not all(callable(getattr(metric, a, None)) for a in ("update", "compute", "reset")):
                raise TypeError(f"metric {name!r} ({type(metric).__name__}) lacks update/compute/reset")

        local_rank = int(os.environ.get("LOCAL_RANK", "0")) if distributed is not False else 0
        self.device = _resolve_device(device, local_rank)
        self.ctx: DistributedContext = setup_distributed(distributed, self.device)
        if self.ctx.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.ctx.local_rank)
            torch.cuda.set_device(self.device)

        self.model = model.to(self.device)
        self.wrapper = MILModelWrapper(self.model)
        self.optimizer = optimizer
        self.metrics_dict = dict(metrics_dict) if metrics_dict is not None else default_metrics()
        for metric in self.metrics_dict.values():
            if callable(getattr(metric, "to", None)):
                metric.to(self.device)
        self.obj_metric = obj_metric
        self.obj_metric_mode = obj_metric_mode
        self.lr_scheduler = lr_scheduler
        self.annealing_scheduler_dict = dict(annealing_scheduler_dict or {})
        self.logger = logger
        self.early_stop_patience = early_stop_patience
        self.disable_pbar = disable_pbar
        self.verbose = verbose
        self.amp_dtype = amp_dtype
        self.grad_accum_steps = grad_accum_steps
        self.checkpoint_path = checkpoint_path
        self.seed = seed
        self.scaler = torch.amp.GradScaler(self.device.type) if amp_dtype == torch.float16 else None

        # Under DDP the wrapper exists only while ``train`` runs (see ``_wrap_for_training``).
        self._local_module = _LossModule(self.wrapper)
        self._train_module: torch.nn.Module = self._local_module
        self._ddp_kwargs = dict(ddp_kwargs or {})
        if self.ctx.enabled and any(
            isinstance(p, torch.nn.parameter.UninitializedParameter) for p in model.parameters()
        ):
            raise ValueError("distributed training needs a model with known input size: pass in_shape")

        self.history: list[dict[str, float]] = []
        self.epoch = 0
        self.best_epoch = 0
        self.best_obj_metric = -math.inf if obj_metric_mode == "max" else math.inf
        self.best_model_state_dict: dict[str, torch.Tensor] | None = None
        self.early_stop_count = 0

    # -- public API ------------------------------------------------------------------------------------------
    def train(self, *args: Any, **kwargs: Any) -> list[dict[str, float]]:
        """Train for up to ``max_epochs`` epochs (fewer if early stopping triggers).

        Both call styles work, positionally or by keyword::

            trainer.train(train_dataloader, epochs=10)                        # the torchmil quick start
            # the reference's signature:
            trainer.train(max_epochs, train_dataloader, val_dataloader=None, test_dataloader=None)

        Args:
            max_epochs / epochs: number of epochs (an int, positional or keyword).
            train_dataloader: iterable of batches (``X`` (B, N, D), ``Y`` (B,), ``mask`` (B, N), ...).
            val_dataloader: validation batches; None = validate on ``train_dataloader`` (in eval mode).
            test_dataloader: optional test batches.

        Returns:
            ``self.history``: one dict per epoch so far (epochs of earlier ``train`` calls included).
        """
        max_epochs, train_dl, val_dl, test_dl = self._parse_train_args(args, kwargs)
        if val_dl is None:
            val_dl = train_dl
        train_dl = shard_dataloader(train_dl, self.ctx, train=True, seed=self.seed)
        val_dl = shard_dataloader(val_dl, self.ctx, train=False)
        test_dl = shard_dataloader(test_dl, self.ctx, train=False) if test_dl is not None else None

        if self.best_model_state_dict is None:
            self.best_model_state_dict = self.get_model_state_dict()
        self._train_module = self._wrap_for_training()
        try:
            self._train_epochs(max_epochs, train_dl, val_dl, test_dl)
        finally:
            self._train_module = self._local_module
        return self.history

    def _wrap_for_training(self) -> torch.nn.Module:
        """The module the training loop calls: wrapped in ``DistributedDataParallel`` when distributed.

        The wrapper lives only while ``train`` runs. A DDP reducer holds the process group, and if it is the last
        holder when it is freed (say the script called ``dist.destroy_process_group()`` itself, as PyTorch's DDP
        tutorial does, and then dropped the Trainer), the group's destructor joins gloo's worker threads with the
        GIL held while a worker may be waiting for the GIL to free a finished collective's tensors: a deadlock
        seen about once in 20 two-process runs.
        """
        if not self.ctx.enabled:
            return self._local_module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self._local_module, device_ids=device_ids, **self._ddp_kwargs)

    def _train_epochs(self, max_epochs: int, train_dl: Any, val_dl: Any, test_dl: Any) -> None:
        for _ in range(max_epochs):
            self.epoch += 1
            _set_epoch(train_dl, self.epoch - 1)
            record: dict[str, float] = {"epoch": self.epoch}
            for mode, loader in (("train", train_dl), ("val", val_dl), ("test", test_dl)):
                if loader is None:
                    continue
                values = self._run_loop(loader, mode)
                if mode == "train":
                    self._check_objective(values)
                self._log(values)
                record.update(values)
            stop = self._end_epoch(record)
            self.history.append(record)
            if stop:
                if self.verbose:
                    _logger.info(
                        "early stopping after epoch %d (no improvement for %d epochs)",
                        self.epoch,
                        self.early_stop_count,
                    )
                break

    def close(self) -> None:
        """Leave the process group safely (a no-op when not distributed, or when the group is already gone).
        Call it once, after the last ``train``; the model and the best weights stay usable."""
        teardown_distributed(self.ctx)

    def get_model_state_dict(self) -> dict[str, torch.Tensor]:
        """A copy (on the CPU) of the model's current ``state_dict`` (keys of the unwrapped model)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def get_best_model_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The ``state_dict`` of the epoch with the best validation objective (None before training)."""
        return self.best_model_state_dict

    def get_best_model(self) -> torch.nn.Module:
        """Load the best weights into the model and return it (the model itself, not a copy)."""
        if self.best_model_state_dict is not None:
            self.model.load_state_dict(self.best_model_state_dict)
        return self.model

    # -- internals -------------------------------------------------------------------------------------------
    @staticmethod
    def _parse_train_args(
        args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[int, Iterable, Iterable | None, Iterable | None]:
        unknown = set(kwargs) - {
            "max_epochs",
            "epochs",
            "train_dataloader",
            "val_dataloader",
            "test_dataloader",
        }
        if unknown:
            raise TypeError(f"train() got unexpected keyword argument(s) {sorted(unknown)}")
        epochs: list[int] = []
        loaders: list[Any] = []
        for arg in args:
            if isinstance(arg, int) and not isinstance(arg, bool):
                epochs.append(arg)
            elif arg is None or isinstance(arg, Iterable):
                loaders.append(arg)
            else:
                raise TypeError(
                    f"train(): positional argument {arg!r} is neither an epoch count nor a dataloader"
                )
        for key in ("max_epochs", "epochs"):
            if key in kwargs:
                epochs.append(kwargs[key])
        if len(set(epochs)) != 1 or len(epochs) > 2:
            raise TypeError(f"train() needs one epoch count (max_epochs= or epochs=), got {epochs or 'none'}")
        names = ["train_dataloader", "val_dataloader", "test_dataloader"]
        if len(loaders) > 3:
            raise TypeError(f"train() takes at most 3 dataloaders, got {len(loaders)}")
        slots = dict(zip(names, loaders))
        for name in names:
            if name in kwargs:
                if name in slots:
                    raise TypeError(f"train() got {name} both positionally and by keyword")
                slots[name] = kwargs[name]
        if slots.get("train_dataloader") is None:
            raise TypeError("train() needs a train_dataloader")
        max_epochs = epochs[0]
        if not isinstance(max_epochs, int) or max_epochs < 0:
            raise TypeError(f"train(): the epoch count must be an int >= 0, got {max_epochs!r}")
        return (
            max_epochs,
            slots["train_dataloader"],
            slots.get("val_dataloader"),
            slots.get("test_dataloader"),
        )

    def _total_loss(self, loss_dict: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not loss_dict:
            raise ValueError(f"{type(self.model).__name__}.compute_loss returned no loss")
        total = 0.0
        for name, value in loss_dict.items():
            scheduler = self.annealing_scheduler_dict.get(name)
            total = total + (scheduler() if scheduler is not None else 1.0) * value
        return total  # type: ignore[return-value]

    def _optimizer_step(self) -> None:
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for scheduler in self.annealing_scheduler_dict.values():
            scheduler.step()

    def _sync_leftover_grads(self) -> None:
        """Average gradients accumulated under ``no_sync`` when the loader's length was unknown."""
        if not self.ctx.enabled:
            return
        for p in self.model.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.ctx.world_size

    def _run_loop(self, loader: Iterable, mode: str) -> dict[str, float]:
        """One pass over ``loader``.

        Returns:
            ``{'{mode}/loss': ..., '{mode}/{loss_name}': ..., '{mode}/{metric}': ...}``.
        """
        training = mode == "train"
        self.model.train(training)
        for metric in self.metrics_dict.values():
            metric.reset()
        means: dict[str, Mean] = {"loss": Mean().to(self.device)}
        n_batches = _length(loader)
        accum = self.grad_accum_steps if training else 1
        autocast = torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        )
        compute = self._train_module if training else self.wrapper.compute_loss
        # The bar is advanced by hand, not wrapped around the loader: tqdm's iterator closes the bar when the
        # loader ends, and Ctrl-C inside that close left the line unended under the CLI's "Interrupted" line.
        # Every close happens here, with Ctrl-C held until it is done.
        pbar: tqdm | None = None
        values: dict[str, float] = {}  # filled once the epoch has run
        try:
            # a bar interrupted half-made prints a traceback when it is collected; a Ctrl-C held during the
            # construction is raised here, inside the try, so that the finally below still ends the bar's line
            # (raised before it, the bar was closed at exit, after the CLI's "Interrupted" line)
            with _ctrl_c_deferred():
                pbar = tqdm(
                    total=n_batches,
                    desc=f"[Epoch {self.epoch}] {mode}",
                    disable=self.disable_pbar or not self.ctx.is_main,
                    leave=True,
                )
            local_loss, local_bags, pending = 0.0, 0, False
            if training:
                self.optimizer.zero_grad(set_to_none=True)
            with torch.enable_grad() if training else torch.no_grad():
                for i, batch in enumerate(loader):
                    batch = _to_device(batch, self.device)
                    Y = batch["Y"]
                    group_start = (i // accum) * accum
                    group_size = accum if n_batches is None else min(accum, n_batches - group_start)
                    closes_group = (i - group_start + 1) == group_size
                    sync = contextlib.nullcontext()
                    if training and not closes_group and isinstance(self._train_module, DistributedDataParallel):
                        sync = self._train_module.no_sync()
                    with sync:
                        with autocast:
                            logits, loss_dict = compute(batch)
                            loss = self._total_loss(loss_dict)
                        if training:
                            scaled = loss / group_size
                            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
                            pending = True
                    if training and closes_group:
                        self._optimizer_step()
                        pending = False

                    n_bags = int(Y.shape[0]) if Y.dim() > 0 else 1
                    means["loss"].update(loss.detach(), n_bags)
                    for name, value in loss_dict.items():
                        means.setdefault(name, Mean().to(self.device)).update(value.detach(), n_bags)
                    logits = logits.detach().float()
                    for metric in self.metrics_dict.values():
                        metric.update(logits, Y)
                    if not pbar.disable:
                        local_loss += float(loss.detach()) * n_bags
                        local_bags += n_bags
                        # shown at the next redraw, at tqdm's pace
                        pbar.set_postfix({f"{mode}/loss": local_loss / local_bags}, refresh=False)
                        pbar.update(1)
                if training and pending:
                    self._sync_leftover_grads()
                    self._optimizer_step()
            if self.ctx.enabled:  # a rank that got no batch knows no loss name: agree before reducing
                gathered: list[list[str]] = [[] for _ in range(self.ctx.world_size)]
                torch.distributed.all_gather_object(gathered, list(means))
                merged = dict.fromkeys(n for names in gathered for n in names)  # the same order on every rank
                means = {n: means[n] if n in means else Mean().to(self.device) for n in merged}
            values = {f"{mode}/{name}": mean.compute() for name, mean in means.items()}
            for name, metric in self.metrics_dict.items():
                values[f"{mode}/{name}"] = _as_float(metric.compute())
        finally:  # also on Ctrl-C or an error mid-epoch: the bar's line is ended before anything else is printed
            with _ctrl_c_deferred():
                if pbar is not None:
                    if values and not pbar.disable:  # the epoch's figures, drawn once, by the close
                        pbar.set_postfix({k: round(v, 4) for k, v in values.items()}, refresh=False)
                    pbar.close()
        return values

    def _log(self, values: dict[str, float]) -> None:
        if self.logger is not None and self.ctx.is_main:
            self.logger.log(values)

    def _check_objective(self, train_values: dict[str, float]) -> None:
        """Fail after the first train loop, not after validation, when ``obj_metric`` names no logged value
        (the loss names are only known once the model has run)."""
        names = [k.split("/", 1)[1] for k in train_values]
        if self.obj_metric not in names:
            raise ValueError(f"obj_metric {self.obj_metric!r} is not among the logged values {names}")

    def _end_epoch(self, record: dict[str, float]) -> bool:
        """Step the lr scheduler, track (and save) the best model; returns whether to stop, on every rank."""
        value = record[f"val/{self.obj_metric}"]
        if self.lr_scheduler is not None:
            if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.lr_scheduler.step(value)
            else:
                self.lr_scheduler.step()
        better = (
            value > self.best_obj_metric if self.obj_metric_mode == "max" else value < self.best_obj_metric
        )
        if better:  # NaN never improves
            self.best_obj_metric = value
            self.best_epoch = self.epoch
            self.best_model_state_dict = self.get_model_state_dict()
            self.early_stop_count = 0
            if self.checkpoint_path is not None and self.ctx.is_main:
                save_checkpoint(
                    self.model,
                    self.checkpoint_path,
                    training={"epoch": self.epoch, "obj_metric": self.obj_metric, "value": value},
                )
        else:
            self.early_stop_count += 1
        if self.verbose:
            _logger.info(
                "epoch %d: val/%s %.6g (best %.6g at epoch %d), early-stop count %d",
                self.epoch,
                self.obj_metric,
                value,
                self.best_obj_metric,
                self.best_epoch,
                self.early_stop_count,
            )
        stop = self.early_stop_patience is not None and self.early_stop_count >= self.early_stop_patience
        return broadcast_flag(stop, self.ctx, self.device)


def _set_epoch(loader: Any, epoch: int) -> None:
    """Tell the loader's samplers the epoch (reshuffles DistributedSampler / SizeAwareBatchSampler)."""
    for attr in ("sampler", "batch_sampler"):
        target = getattr(loader, attr, None)
        if callable(getattr(target, "set_epoch", None)):
            target.set_epoch(epoch)


@contextlib.contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block has run, then raise the KeyboardInterrupt it would have raised.

    For tqdm's constructor and close: interrupted half-way, a bar lacks attributes its ``__del__`` reads, and
    Python prints that ``AttributeError`` as an ignored-exception traceback after the clean "Interrupted" line.
    Only Python's default handler is replaced, and only in the main thread (the one signal handlers run in).
    """
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt
