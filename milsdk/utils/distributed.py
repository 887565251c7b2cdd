"""Data-parallel training support: process-group setup, sharding of DataLoaders, and the torchrun launcher.

The Trainer calls these so that a training script runs unchanged under
``torchrun --nproc_per_node=K script.py`` (or ``python -m torch.distributed.run ...``):

- the process group is initialised from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT``) with NCCL on GPUs and gloo on CPUs, unless the script did it already;
- a DataLoader built with ``shuffle=True/False`` (a random or sequential sampler) is rebuilt around a sampler
  that gives each rank its share: a ``DistributedSampler`` for training (same number of batches on every rank,
  as DDP requires) and an exact, non-repeating split for evaluation (so metrics equal a single-process run);
- a DataLoader whose sampler or batch sampler already knows the replicas (``DistributedSampler``,
  :class:`milsdk.data.SizeAwareBatchSampler`, anything with a ``num_replicas`` attribute) is used as it is.
"""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

__all__ = [
    "DistributedContext",
    "EvalShardSampler",
    "broadcast_flag",
    "launch",
    "setup_distributed",
    "shard_dataloader",
    "torchrun_command",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: ``world_size`` processes, this one is ``rank`` (``local_rank`` on its
    node)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when training runs on more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that logs, shows the progress bar and writes files)."""
        return self.rank == 0


def _env_world_size(environ: dict[str, str]) -> int:
    try:
        return int(environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def setup_distributed(
    distributed: bool | None, device: torch.device, environ: dict[str, str] | None = None
) -> DistributedContext:
    """Join (or start) the default process group when training should be distributed.

    Args:
        distributed: None = automatic (an initialised process group, or torchrun's environment with
            WORLD_SIZE > 1); True = required (raise if neither is there); False = single process.
        device: the training device; picks the backend of a new group (NCCL for CUDA, gloo otherwise).
        environ: the environment to read (default ``os.environ``).

    Returns:
        The context; ``world_size == 1`` when not distributed.
    """
    environ = dict(os.environ) if environ is None else environ
    if distributed is False or not dist.is_available():
        if distributed:
            raise RuntimeError("distributed=True but this PyTorch build has no torch.distributed")
        return DistributedContext()
    if not dist.is_initialized():
        if _env_world_size(environ) <= 1:
            if distributed:
                raise RuntimeError(
                    "distributed=True but no process group is initialised and WORLD_SIZE is not > 1; "
                    "start the script with `torchrun --nproc_per_node=K script.py`"
                )
            return DistributedContext()
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        logger.info(
            "initialised process group (%s): rank %d of %d", backend, dist.get_rank(), dist.get_world_size()
        )
    world, rank = dist.get_world_size(), dist.get_rank()
    local_rank = int(environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
    return DistributedContext(world_size=world, rank=rank, local_rank=local_rank)


def teardown_distributed(ctx: DistributedContext) -> None:
    """Leave the process group this module joined, after a barrier, so that no rank exits while a peer still
    holds a connection to it (gloo aborts the process otherwise).

    Call it after dropping every ``DistributedDataParallel`` wrapper. The pause between the barrier and the
    destruction is not cosmetic: gloo's worker thread frees the finished work (tensors that Python owns) after
    the barrier returns, which needs the GIL, while destroying the group joins that thread with the GIL held;
    sleeping releases the GIL so the worker can finish first (without it, ranks deadlocked now and then).
    """
    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        gc.collect()
        time.sleep(0.5)
        dist.destroy_process_group()


def broadcast_flag(flag: bool, ctx: DistributedContext, device: torch.device) -> bool:
    """Rank 0's value of ``flag`` on every rank (a decision all ranks must take together)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


class EvalShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` of a dataset of ``n`` items: every item exactly once over the
    ranks, none repeated (ranks may get one item more or less, which evaluation allows)."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def _knows_replicas(obj: Any) -> bool:
    return isinstance(obj, DistributedSampler) or hasattr(obj, "num_replicas")


def shard_dataloader(loader: Any, ctx: DistributedContext, train: bool, seed: int = 0) -> Any:
    """Give this rank its share of ``loader`` (see the module docstring).

    Args:
        loader: a DataLoader (other iterables are returned unchanged: each rank must then yield its own
            share).
        ctx: the distributed context; nothing changes when it is not enabled.
        train: training (``DistributedSampler``: equal batch counts, padded by repeating a few items; shuffled
            with ``seed`` and the epoch when the original sampler was random) or evaluation (exact split).
        seed: shuffling seed, the same on every rank.

    Returns:
        The loader to iterate on this rank.

    Raises:
        TypeError: a custom sampler or batch sampler that does not know the replicas (give it
            ``num_replicas`` / ``rank``, or shard the data yourself).
    """
    if not ctx.enabled or not isinstance(loader, DataLoader):
        return loader
    if isinstance(loader.dataset, IterableDataset):
        logger.warning(
            "the DataLoader wraps an IterableDataset: each rank must yield its own share of the data"
        )
        return loader
    if _knows_replicas(loader.sampler) or _knows_replicas(loader.batch_sampler):
        return loader
    if loader.batch_sampler is not None and type(loader.batch_sampler) is not BatchSampler:
        raise TypeError(
            f"cannot shard a DataLoader with the custom batch sampler {type(loader.batch_sampler).__name__} "
            "across ranks; give it num_replicas/rank (e.g. milsdk.data.SizeAwareBatchSampler does)"
        )
    if isinstance(loader.sampler, RandomSampler):
        shuffle = True
    elif isinstance(loader.sampler, SequentialSampler):
        shuffle = False
    else:
        raise TypeError(
            f"cannot shard a DataLoader with the custom sampler {type(loader.sampler).__name__} "
            "across ranks; "
            "use a DistributedSampler-style sampler (num_replicas/rank) or shuffle=True/False"
        )
    n = len(loader.dataset)  # type: ignore[arg-type]
    sampler: Sampler[int]
    if train:
        sampler = DistributedSampler(
            loader.dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed
        )
    else:
        sampler = EvalShardSampler(n, ctx.rank, ctx.world_size)
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor if loader.num_workers > 0 else None,
        persistent_workers=loader.persistent_workers,
        pin_memory_device=loader.pin_memory_device,
    )


def torchrun_command(nproc: int, args: Sequence[str], python: str | None = None) -> list[str]:
    """The command that runs ``python <args>`` as ``nproc`` data-parallel processes on this machine.

    Args:
        nproc: processes (one per GPU, or CPU processes with gloo).
        args: what follows ``python``, e.g. ``["train.py", "--epochs", "10"]``.
        python: interpreter (default: the running one).

    Returns:
        ``[python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=N", *args]``;
        ``--standalone`` picks a free rendezvous port on the loopback interface.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [python or sys.executable, *launcher, *args]


def launch(nproc: int, args: Sequence[str], env: dict[str, str] | None = None) -> int:
    """Run ``python <args>`` as ``nproc`` processes (see :func:`torchrun_command`); returns the exit code.

    Meant for ``milsdk train --nproc N``: the CLI calls
    ``launch(N, ["-m", "milsdk.cli", "train", *other_args])`` (the ``--nproc`` option removed; torchrun's
    ``-m`` runs a module, which needs ``milsdk/cli/__main__.py``); each process then builds its Trainer, which
    joins the process group.
    """
    return subprocess.call(torchrun_command(nproc, args), env=env)
