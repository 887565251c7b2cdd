"""Random bags in the deployment contract's layout, for export examples and verification (numpy only).

One generator for every input kind of :data:`milsdk.contract.INPUT_KINDS`: features are standard normal, coords
are distinct cells of a patch grid, and a graph model's edges are the 8-neighbour grid graph of those coords
(:func:`milsdk.utils.graph.coords_graph`, what the client builds from coords). Batches are padded by the
client's own :func:`milsdk.serving.planner.pad_batch`, so export, verification and serving pad alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from milsdk.contract import COORDS, EDGE_INDEX, EDGE_WEIGHT, FEATURES
from milsdk.serving.planner import pad_batch
from milsdk.utils.graph import coords_graph

__all__ = ["bag_batch", "random_bag", "random_batch"]


def random_bag(n: int, feature_dim: int, inputs: Sequence[str], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One bag of ``n`` instances with every input in ``inputs`` (except the mask).

    Returns:
        {"features": (n, D) float32, "coords": (n, 2) float32 grid cells (shuffled, offset), "edge_index":
        (2, E) int64 and "edge_weight": (E,) float32 of the 8-neighbour graph} as ``inputs`` ask.
    """
    bag = {FEATURES: rng.standard_normal((n, feature_dim), dtype=np.float32)}
    if COORDS in inputs or EDGE_INDEX in inputs:
        side = int(np.ceil(np.sqrt(n))) + 1
        cells = rng.permutation(side * side)[:n]
        # a few cells off the origin, so that no model may assume coords start at 0; small, because a model whose
        # cost is the coords' grid area (SETMIL with grid="all_cells") pays for every empty cell
        offset = rng.integers(1, 9, size=2)
        coords = (np.stack([cells // side, cells % side], axis=1) + offset).astype(np.float32)
        if COORDS in inputs:
            bag[COORDS] = coords
        if EDGE_INDEX in inputs:
            bag[EDGE_INDEX], bag[EDGE_WEIGHT] = coords_graph(coords)
    return bag


def random_batch(
    lengths: Sequence[int], n_max: int, feature_dim: int, inputs: Sequence[str], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """A padded batch of random bags of the given sizes: {name: array} for every name in ``inputs``."""
    bags = [random_bag(int(n), feature_dim, inputs, rng) for n in lengths]
    return pad_batch(bags, n_max, list(inputs))


def bag_batch(bag: dict[str, np.ndarray], inputs: Sequence[str]) -> dict[str, np.ndarray]:
    """One bag as a batch of one (B = 1) in the contract layout: every input ``inputs`` (``ModelInfo.inputs``)
    names, the 8-neighbour grid graph of its coords for a graph model (as :class:`~milsdk.serving.MILClient`
    builds it).

    Args:
        bag: {"features": (N, D) float32, "coords": (N, 2) where the model needs positions or a graph}.
        inputs: the artifact's input names.
    """
    prepared = dict(bag)
    if EDGE_INDEX in inputs:
        prepared[EDGE_INDEX], prepared[EDGE_WEIGHT] = coords_graph(bag[COORDS])
    return pad_batch([prepared], len(bag[FEATURES]), list(inputs))
