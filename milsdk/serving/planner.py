"""Batch planning for variable-size bags: sort by size, pack under a budget of padded instance slots, pad.

A request carries a padded batch ``features`` (B, N_max, D) + ``mask`` (B, N_max): it costs B * N_max instance
slots whatever the bags' own sizes, so the planner groups bags of similar size. Bags sorted by size (largest first)
are packed greedily while ``B * N_max <= max_instances``, ``B <= max_batch_size`` and the request's padded share
stays within ``max_padding``; a bag larger than the budget goes alone. A model that is not padding-invariant gets one
bag per request, unpadded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from milsdk.contract import FEATURES, MASK, input_kind
from milsdk.errors import BagError

__all__ = ["Batch", "BatchPlan", "plan_batches", "pad_batch"]


@dataclass(frozen=True)
class Batch:
    """One request: which bags (indices into the planned sequence) and the padded bag length.

    Attributes:
        indices: positions of the bags in the sequence given to :func:`plan_batches`, largest bag first.
        n_max: N_max, the padded instance axis of the request.
        n_real: real instances in the request (sum of the bags' sizes).
    """

    indices: tuple[int, ...]
    n_max: int
    n_real: int

    @property
    def slots(self) -> int:
        """Instance slots the request carries, B * N_max."""
        return len(self.indices) * self.n_max


@dataclass(frozen=True)
class BatchPlan:
    """The batches for a sequence of bags, and what the padding costs."""

    batches: tuple[Batch, ...]

    @property
    def real_instances(self) -> int:
        """Sum of the bags' sizes."""
        return sum(b.n_real for b in self.batches)

    @property
    def padded_slots(self) -> int:
        """Instance slots sent, padding included."""
        return sum(b.slots for b in self.batches)

    @property
    def padded_fraction(self) -> float:
        """Fraction of the sent instance slots that are padding (0 = no waste)."""
        slots = self.padded_slots
        return 0.0 if slots == 0 else 1.0 - self.real_instances / slots


def plan_batches(
    sizes: Sequence[int], max_instances: int = 32768, max_batch_size: int = 16, pad: bool = True,
    max_padding: float = 1.0,
) -> BatchPlan:
    """Group bags into padded requests.

    Args:
        sizes: N_i of each bag (>= 1).
        max_instances: budget of padded instance slots per request (B * N_max); a larger bag goes alone.
        max_batch_size: most bags per request.
        pad: False for a model that is not padding-invariant: one bag per request, N_max = N_i.
        max_padding: most padded share of one request's slots (0..1); a smaller bag that would push the request
            past it starts the next request. 1.0 = no limit. A large budget packs bags of quite different sizes
            (the Triton client's 32,768 slots: 2.9% padding on 200 log-normal bags, 0.03 brings it under 3% with
            a few more requests).

    Returns:
        The plan; every index of ``sizes`` appears in exactly one batch.
    """
    if max_instances < 1 or max_batch_size < 1:
        raise ValueError(f"max_instances and max_batch_size must be >= 1, got {max_instances}, {max_batch_size}")
    if not 0.0 <= max_padding <= 1.0:
        raise ValueError(f"max_padding must be in [0, 1], got {max_padding}")
    order = sorted(range(len(sizes)), key=lambda i: (-int(sizes[i]), i))
    if not pad:
        return BatchPlan(tuple(Batch((i,), int(sizes[i]), int(sizes[i])) for i in order))
    batches: list[Batch] = []
    start = 0
    while start < len(order):
        n_max = int(sizes[order[start]])
        # how many bags of at most n_max instances fit the slot budget (at least the first one)
        fit = max(1, min(max_batch_size, max_instances // n_max))
        members = [order[start]]
        real = n_max
        for i in order[start + 1 : start + fit]:
            # sizes fall along the order: once one bag pads too much, every later one would pad more
            if 1.0 - (real + int(sizes[i])) / ((len(members) + 1) * n_max) > max_padding:
                break
            members.append(i)
            real += int(sizes[i])
        batches.append(Batch(tuple(members), n_max, real))
        start += len(members)
    return BatchPlan(tuple(batches))


def pad_batch(bags: Sequence[dict[str, np.ndarray]], n_max: int, inputs: Sequence[str]) -> dict[str, np.ndarray]:
    """Stack bags into the padded arrays of the deployment contract (shapes, dtypes and pad values from
    :data:`milsdk.contract.INPUT_KINDS`).

    Args:
        bags: B dicts with ``features`` (N_i, D) float32 and, as ``inputs`` ask, ``coords`` (N_i, 2) float32,
            ``edge_index`` (2, E_i) int64 and ``edge_weight`` (E_i,) float32.
        n_max: padded instance axis (>= every N_i).
        inputs: the model's input names (``ModelInfo.inputs``).

    Returns:
        {name: array} for every name in ``inputs``: ``features`` (B, n_max, D) zero-padded, ``mask`` (B, n_max)
        bool, ``coords`` (B, n_max, 2), ``edge_index`` (B, 2, E_max) padded with edge 0 -> 0 of weight 0,
        ``edge_weight`` (B, E_max), E_max the largest edge count (at least 1).
    """
    batch_size = len(bags)
    kinds = [input_kind(name) for name in inputs]
    edgeless = any(k.shape[-1] == "E" and np.shape(bags[0][k.name])[-1] == 0 for k in kinds if not k.derived)
    if batch_size == 1 and bags[0][FEATURES].shape[0] == n_max and not edgeless:
        # nothing to pad: views, no copy of a large bag (a bag without edges still gets its one padding edge)
        bag = bags[0]
        return {
            k.name: np.ones((1, n_max), dtype=bool) if k.name == MASK else np.asarray(bag[k.name])[None]
            for k in kinds
        }
    sizes = [int(bag[FEATURES].shape[0]) for bag in bags]
    for b, n in enumerate(sizes):
        if n > n_max:
            raise BagError(f"bag {b} has {n} instances, more than the batch's n_max {n_max}")
    out: dict[str, np.ndarray] = {}
    for kind in kinds:
        if kind.derived:  # the mask
            out[kind.name] = np.arange(n_max)[None, :] < np.asarray(sizes)[:, None]
            continue
        arrays = [np.asarray(bag[kind.name]) for bag in bags]
        lengths = {}
        for axis, dim in enumerate(kind.shape[1:]):
            if dim == "N":
                lengths[axis] = n_max
            elif dim == "E":
                lengths[axis] = max(1, max(a.shape[axis] for a in arrays))
        shape = [lengths.get(axis, arrays[0].shape[axis]) for axis in range(len(kind.shape) - 1)]
        dtype = arrays[0].dtype if kind.name == FEATURES else np.dtype(kind.dtype)
        # each slot is written once: the bag's values, then the pad value on the part it does not fill (a
        # np.full first would write the whole batch twice)
        padded = np.empty((batch_size, *shape), dtype=dtype)
        for b, array in enumerate(arrays):
            row = padded[b]
            row[tuple(slice(0, s) for s in array.shape)] = array
            for axis, size in enumerate(array.shape):
                if size < shape[axis]:
                    row[(slice(None),) * axis + (slice(size, None),)] = kind.pad_value
        out[kind.name] = padded
    return out
