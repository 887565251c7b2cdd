"""Size-aware batching of variable-size bags under a budget of padded instance slots.

A padded batch of bags with sizes n_1..n_k costs ``k * max(n_i)`` instance slots (memory and compute), of
which ``k * max(n_i) - Σ n_i`` hold padding. Grouping bags of similar size keeps that waste small while
filling each batch up to the budget, which matters for whole-slide images whose sizes span two orders of
magnitude.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["SizeAwareBatchSampler", "padding_waste"]

logger = logging.getLogger(__name__)


def padding_waste(batches: Sequence[Sequence[int]], bag_sizes: Sequence[int]) -> float:
    """Fraction of padded slots over all the batches: ``1 - Σ n_i / Σ_batches (len(batch) * max n_i)``."""
    sizes = np.asarray(bag_sizes, dtype=np.int64)
    slots = sum(len(b) * int(sizes[list(b)].max()) for b in batches if len(b))
    return 1.0 - float(sum(int(sizes[list(b)].sum()) for b in batches)) / slots if slots else 0.0


class SizeAwareBatchSampler(Sampler[list[int]]):
    """Batches of bag indices of similar size, each within ``max_instances`` padded slots.

    Plan of an epoch (deterministic given ``seed`` and the epoch): bags are sorted by size (ties broken at
    random), then cut greedily into consecutive runs whose padded size ``len * max`` fits the budget; with
    ``shuffle`` the first run gets a random fraction of the budget, so the batch boundaries (and so each
    batch's bags) change from epoch to epoch, and the order of the batches is shuffled. A bag larger than the
    budget gets a batch of its own. Every bag appears exactly once per epoch over all replicas.

    With several replicas (DDP), the batches are dealt round-robin so that every rank gets the same number:
    when the count does not divide evenly, the batches with the most bags are split in two (or, with
    ``drop_last``, the surplus batches are dropped). Only with fewer bags than replicas are batches repeated.

    Use it as a DataLoader's ``batch_sampler``::

        sampler = SizeAwareBatchSampler(sizes, max_instances=100_000)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn)

    The Trainer calls ``set_epoch`` every epoch and leaves the sampler alone under DDP (it knows its
    replicas).

    Args:
        bag_sizes: number of instances of each bag of the dataset, in dataset order.
        max_instances: budget of padded slots per batch (``batch_size * largest bag``).
        max_batch_size: at most this many bags per batch (None = no limit).
        shuffle: vary batches and their order across epochs (False = one fixed plan, batches by increasing
            size).
        seed: seed of the plan; must be equal on every rank.
        num_replicas: number of ranks (None = the default process group's size when initialised, else 1).
        rank: this rank (None = the default process group's rank when initialised, else 0).
        drop_last: drop surplus batches instead of splitting batches to deal evenly across replicas.
    """

    def __init__(
        self,
        bag_sizes: Sequence[int],
        max_instances: int,
        max_batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        sizes = np.asarray(bag_sizes, dtype=np.int64).reshape(-1)
        if sizes.size == 0:
            raise ValueError("SizeAwareBatchSampler: bag_sizes is empty")
        if (sizes < 1).any():
            raise ValueError(
                f"SizeAwareBatchSampler: bag {int(np.argmin(sizes))} has {int(sizes.min())} instances"
            )
        if max_instances < 1:
            raise ValueError(f"SizeAwareBatchSampler: max_instances must be >= 1, got {max_instances}")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"SizeAwareBatchSampler: max_batch_size must be >= 1, got {max_batch_size}")
        if num_replicas is not None and rank is not None and not 0 <= rank < num_replicas:
            raise ValueError(f"SizeAwareBatchSampler: rank {rank} not in [0, {num_replicas})")
        self.bag_sizes = sizes
        self.max_instances = int(max_instances)
        self.max_batch_size = max_batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0
        self._plan_cache: tuple[tuple[int, int], list[list[int]]] | None = None

    # -- replicas --------------------------------------------------------------------------------------------
    def _replicas(self) -> tuple[int, int]:
        """(num_replicas, rank), resolved when first needed so that the sampler can be built before the
        Trainer initialises the process group."""
        initialised = dist.is_available() and dist.is_initialized()
        world = (
            self.num_replicas
            if self.num_replicas is not None
            else (dist.get_world_size() if initialised else 1)
        )
        rank = self.rank if self.rank is not None else (dist.get_rank() if initialised else 0)
        return world, rank

    def set_epoch(self, epoch: int) -> None:
        """Use the plan of ``epoch`` (call it on every rank before iterating)."""
        self.epoch = int(epoch)

    # -- planning --------------------------------------------------------------------------------------------
    def _pack(self, order: np.ndarray, first_budget: float) -> list[list[int]]:
        """Cut ``order`` (indices by increasing size) into consecutive batches within the budget."""
        batches: list[list[int]] = []
        current: list[int] = []
        budget = first_budget
        for idx in order.tolist():
            size = int(self.bag_sizes[idx])  # sizes increase along ``order``: the newest bag is the largest
            full = self.max_batch_size is not None and len(current) >= self.max_batch_size
            if current and (full or size * (len(current) + 1) > budget):
                batches.append(current)
                current, budget = [], self.max_instances
            current.append(idx)
        batches.append(current)
        return batches

    def _balance(self, batches: list[list[int]], world: int, rng: np.random.Generator) -> list[list[int]]:
        """Make the number of batches a multiple of ``world``: drop the surplus, or split the fullest batches."""
        surplus = len(batches) % world
        if surplus == 0:
            return batches
        if self.drop_last and len(batches) >= world:
            return batches[: len(batches) - surplus]
        needed = world - surplus
        while needed:
            longest = max(range(len(batches)), key=lambda i: len(batches[i]))
            batch = batches[longest]
            if len(batch) < 2:
                break
            half = len(batch) // 2  # batches hold bags by increasing size: each half stays homogeneous
            batches[longest : longest + 1] = [batch[:half], batch[half:]]
            needed -= 1
        if needed:
            logger.warning(
                "SizeAwareBatchSampler: %d bags for %d replicas: repeating %d batch(es)",
                len(self.bag_sizes),
                world,
                needed,
            )
            batches = batches + [batches[int(i)] for i in rng.integers(0, len(batches), needed)]
        return batches

    def plan(self) -> list[list[int]]:
        """All batches of the current epoch, over every replica, in the order they are dealt (cached)."""
        world, _ = self._replicas()
        key = (self.epoch, world)
        if self._plan_cache is not None and self._plan_cache[0] == key:
            return self._plan_cache[1]
        n = len(self.bag_sizes)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = np.lexsort((rng.permutation(n), self.bag_sizes))
            batches = self._pack(order, first_budget=self.max_instances * rng.uniform(0.0, 1.0))
        else:
            rng = np.random.default_rng([self.seed])
            order = np.argsort(self.bag_sizes, kind="stable")
            batches = self._pack(order, first_budget=self.max_instances)
        batches = self._balance(batches, world, rng)
        if self.shuffle:
            batches = [batches[int(i)] for i in rng.permutation(len(batches))]
        self._plan_cache = (key, batches)
        return batches

    @property
    def padding_waste(self) -> float:
        """Fraction of padded slots in the current epoch's plan (all replicas): 0 = no padding."""
        return padding_waste(self.plan(), self.bag_sizes)

    # -- Sampler protocol ------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[list[int]]:
        world, rank = self._replicas()
        yield from (list(b) for b in self.plan()[rank::world])

    def __len__(self) -> int:
        world, rank = self._replicas()
        return len(self.plan()[rank::world])

    def __repr__(self) -> str:
        return (
            f"SizeAwareBatchSampler(n_bags={len(self.bag_sizes)}, max_instances={self.max_instances}, "
            f"max_batch_size={self.max_batch_size}, shuffle={self.shuffle}, seed={self.seed})"
        )
