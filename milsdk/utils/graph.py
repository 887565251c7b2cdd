"""Graph utilities on edge lists (numpy): degrees, self-loops, normalisation and radius graphs from coordinates.

A graph over N instances is an edge list ``edge_index`` (2, E) int64 (row 0 = source, row 1 = target) with
``edge_weight`` (E,) float32. ``build_adj`` finds neighbours with a grid hash instead of a KD-tree, so it needs
only numpy and runs in O(N * neighbours): points are binned into cells of side ``dist_thr`` and each cell is
compared with its 3^d neighbouring cells only.
"""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["add_self_loops", "bag_adj", "build_adj", "coords_graph", "degree", "grid_units", "normalize_adj"]

# Cells are a hair larger than the threshold so that float rounding in ``coords / cell`` can never put two points
# at distance exactly ``dist_thr`` two cells apart (which would drop a valid edge).
_CELL_MARGIN = 1e-6
# Feature distances are computed this many float64 elements at a time, to bound memory for large (E, D).
_FEAT_CHUNK_ELEMENTS = 1 << 22


def _n_nodes(edge_index: np.ndarray, n_nodes: int | None) -> int:
    if n_nodes is not None:
        return int(n_nodes)
    return int(edge_index.max()) + 1 if edge_index.size else 0


def _weights(edge_index: np.ndarray, edge_weight: np.ndarray | None) -> np.ndarray:
    if edge_weight is None:
        return np.ones(edge_index.shape[1], dtype=np.float32)
    return np.asarray(edge_weight)


def degree(
    index: np.ndarray, edge_weight: np.ndarray | None = None, n_nodes: int | None = None
) -> np.ndarray:
    """Weighted out-degree of every node: the sum of the weights of the edges leaving it.

    Args:
        index: (2, E) int edge list; edges are grouped by ``index[0]``.
        edge_weight: (E,) weights; None means 1 per edge.
        n_nodes: number of nodes; None means ``index.max() + 1``.

    Returns:
        (n_nodes,) float32 degrees.
    """
    index = np.asarray(index)
    weights = _weights(index, edge_weight)
    n = _n_nodes(index, n_nodes)
    return np.bincount(index[0], weights=weights, minlength=n).astype(np.float32)


def _append_self_loops(
    edge_index: np.ndarray, edge_weight: np.ndarray, n_nodes: int
) -> tuple[np.ndarray, np.ndarray]:
    loops = np.arange(n_nodes, dtype=np.int64)
    return (
        np.concatenate([edge_index.astype(np.int64), np.stack([loops, loops])], axis=1),
        np.concatenate([edge_weight.astype(np.float32), np.ones(n_nodes, dtype=np.float32)]),
    )


def add_self_loops(
    edge_index: np.ndarray, edge_weight: np.ndarray | None = None, n_nodes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Append an (i, i) edge of weight 1 for every node.

    Args:
        edge_index: (2, E) int edge list.
        edge_weight: (E,) weights; None means 1 per edge.
        n_nodes: number of nodes; None means ``edge_index.max() + 1``.

    Returns:
        edge_index: (2, E + n_nodes) int64; edge_weight: (E + n_nodes,) float32.
    """
    edge_index = np.asarray(edge_index)
    return _append_self_loops(edge_index, _weights(edge_index, edge_weight), _n_nodes(edge_index, n_nodes))


def normalize_adj(
    edge_index: np.ndarray, edge_weight: np.ndarray | None = None, n_nodes: int | None = None
) -> np.ndarray:
    r"""Symmetric normalisation :math:`\tilde w_{ij} = w_{ij} / \sqrt{d_i d_j}` (the weights of D^-1/2 A D^-1/2).

    Args:
        edge_index: (2, E) int edge list.
        edge_weight: (E,) weights; None means 1 per edge.
        n_nodes: number of nodes; None means ``edge_index.max() + 1``.

    Returns:
        (E,) float32 normalised weights; an edge touching a node of zero degree gets 0.
    """
    edge_index = np.asarray(edge_index)
    weights = _weights(edge_index, edge_weight).astype(np.float64)
    n = _n_nodes(edge_index, n_nodes)
    deg = np.bincount(edge_index[0], weights=weights, minlength=n)
    with np.errstate(divide="ignore"):
        inv_sqrt = np.where(deg > 0, 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)), 0.0)
    return (weights * inv_sqrt[edge_index[0]] * inv_sqrt[edge_index[1]]).astype(np.float32)


def _radius_pairs_grid(coords: np.ndarray, dist_thr: float) -> tuple[np.ndarray, np.ndarray] | None:
    """All ordered pairs (i, j), i != j, with ||c_i - c_j|| <= dist_thr, via a grid hash; None if the grid's
    linear cell keys would overflow int64 (the caller then falls back to brute force)."""
    d = coords.shape[1]
    cell_size = dist_thr * (1.0 + _CELL_MARGIN)
    # +1 so that the -1 neighbour offset of every occupied cell stays >= 0.
    cells_f = np.floor((coords - coords.min(axis=0)) / cell_size) + 1
    if np.sum(np.log2(cells_f.max(axis=0) + 2)) > 62:
        return None
    cells = cells_f.astype(np.int64)
    extent = cells.max(axis=0) + 2
    strides = np.ones(d, dtype=np.int64)
    for k in range(d - 2, -1, -1):
        strides[k] = strides[k + 1] * extent[k + 1]
    keys = cells @ strides
    order = np.argsort(keys, kind="stable")
    cell_keys, cell_start, cell_count = np.unique(keys[order], return_index=True, return_counts=True)

    src_parts, dst_parts = [], []
    for offset in itertools.product((-1, 0, 1), repeat=d):
        target = cell_keys + np.asarray(offset, dtype=np.int64) @ strides
        pos = np.minimum(np.searchsorted(cell_keys, target), len(cell_keys) - 1)
        hit = np.flatnonzero(cell_keys[pos] == target)
        if hit.size == 0:
            continue
        # Every (point in cell a) x (point in cell b) pair, laid out flat: pair t of cell pair q is
        # (a_start + local // b_count, b_start + local % b_count).
        a_start, a_count = cell_start[hit], cell_count[hit]
        b_start, b_count = cell_start[pos[hit]], cell_count[pos[hit]]
        sizes = a_count * b_count
        q = np.repeat(np.arange(hit.size), sizes)
        local = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        i = order[a_start[q] + local // b_count[q]]
        j = order[b_start[q] + local % b_count[q]]
        diff = coords[i] - coords[j]
        keep = (i != j) & (np.sqrt(np.einsum("ed,ed->e", diff, diff)) <= dist_thr)
        src_parts.append(i[keep])
        dst_parts.append(j[keep])
    if not src_parts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(src_parts), np.concatenate(dst_parts)


def _radius_pairs_brute(coords: np.ndarray, dist_thr: float) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs within ``dist_thr`` by blockwise all-pairs distances (for grids too large to hash)."""
    n = coords.shape[0]
    block = max(1, (1 << 22) // max(n, 1))
    src_parts, dst_parts = [], []
    for start in range(0, n, block):
        diff = coords[start : start + block, None, :] - coords[None, :, :]
        i, j = np.nonzero(np.sqrt(np.einsum("abd,abd->ab", diff, diff)) <= dist_thr)
        i = i + start
        keep = i != j
        src_parts.append(i[keep])
        dst_parts.append(j[keep])
    return np.concatenate(src_parts).astype(np.int64), np.concatenate(dst_parts).astype(np.int64)


def _feature_weights(feat: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """exp(-||f_i - f_j||_2 / D) per edge, computed in chunks to bound memory."""
    feat = feat.reshape(feat.shape[0], -1)
    feat_dim = feat.shape[1]
    out = np.empty(src.shape[0], dtype=np.float32)
    chunk = max(1, _FEAT_CHUNK_ELEMENTS // max(feat_dim, 1))
    for start in range(0, src.shape[0], chunk):
        s = slice(start, start + chunk)
        diff = feat[src[s]].astype(np.float64) - feat[dst[s]]
        out[s] = np.exp(-np.sqrt(np.einsum("ed,ed->e", diff, diff)) / feat_dim)
    return out


def build_adj(
    coords: np.ndarray,
    feat: np.ndarray | None = None,
    dist_thr: float = 1.0,
    add_self_loops: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Radius graph: an edge i -> j (both ways) for every j != i with :math:`\|c_i - c_j\|_2 \le` ``dist_thr``.

    With integer grid coordinates, ``dist_thr=1.5`` gives the 8-neighbourhood in 2-D (4-neighbourhood below 1.414).

    Args:
        coords: (N, d) coordinates (any real dtype).
        feat: optional (N, D) or (N, ...) features; when given, the weight of i -> j is
            :math:`\exp(-\|f_i - f_j\|_2 / D)` instead of 1 (D = features per instance).
        dist_thr: neighbourhood radius, > 0.
        add_self_loops: also add (i, i) of weight 1 for every node.

    Returns:
        edge_index: (2, E) int64, sorted by (source, target); edge_weight: (E,) float32. With no edges the
        shapes are (2, 0) and (0,).
    """
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim == 1:
        coords = coords[:, None]
    if coords.ndim != 2:
        raise ValueError(f"build_adj: coords must be (N, d), got shape {coords.shape}")
    if not dist_thr > 0:
        raise ValueError(f"build_adj: dist_thr must be > 0, got {dist_thr}")
    if not np.all(np.isfinite(coords)):
        raise ValueError("build_adj: coords contain NaN or inf")
    n = coords.shape[0]
    if feat is not None and np.asarray(feat).shape[0] != n:
        raise ValueError(f"build_adj: feat has {np.asarray(feat).shape[0]} rows, coords have {n}")

    if n == 0:
        src = dst = np.empty(0, np.int64)
    else:
        pairs = _radius_pairs_grid(coords, float(dist_thr))
        src, dst = pairs if pairs is not None else _radius_pairs_brute(coords, float(dist_thr))
        order = np.lexsort((dst, src))
        src, dst = src[order], dst[order]
    edge_index = np.stack([src, dst]).astype(np.int64)
    if feat is None:
        edge_weight = np.ones(src.shape[0], dtype=np.float32)
    else:
        edge_weight = _feature_weights(np.asarray(feat), src, dst)
    if add_self_loops:
        edge_index, edge_weight = _append_self_loops(edge_index, edge_weight, n)
    return edge_index, edge_weight


def bag_adj(
    coords: np.ndarray,
    feat: np.ndarray | None = None,
    dist_thr: float = 1.5,
    norm_adj: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The adjacency a dataset attaches to a bag: radius graph, optionally normalised; a one-instance bag gets a
    single self-loop of weight 1 (so graph layers see a non-empty graph).

    Args:
        coords: (N, d) coordinates.
        feat: optional (N, D) features for distance weights (see ``build_adj``).
        dist_thr: neighbourhood radius.
        norm_adj: apply D^-1/2 A D^-1/2.

    Returns:
        edge_index: (2, E) int64, unique and sorted by (source, target); edge_weight: (E,) float32.
    """
    coords = np.asarray(coords)
    if coords.shape[0] == 1:
        return np.zeros((2, 1), dtype=np.int64), np.ones(1, dtype=np.float32)
    edge_index, edge_weight = build_adj(coords, feat=feat, dist_thr=dist_thr)
    if norm_adj:
        edge_weight = normalize_adj(edge_index, edge_weight, n_nodes=coords.shape[0])
    return edge_index, edge_weight


def grid_units(coords: np.ndarray) -> np.ndarray:
    """Patch coordinates in grid units: each axis shifted to start at 0 and divided by its patch step (the
    smallest positive gap between the axis's distinct values; 1 when there is none), rounded to integers.

    Feature files store coordinates in pixels (CLAM / TRIDENT: the patch's top-left corner at level 0, a
    multiple of the patch size); the 8-neighbour radius 1.5 is meant in patches.

    Args:
        coords: (N, d) coordinates.

    Returns:
        (N, d) float64 integer-valued grid coordinates.
    """
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim == 1:
        coords = coords[:, None]
    out = np.empty_like(coords)
    for axis in range(coords.shape[1]):
        values = coords[:, axis]
        distinct = np.unique(values)
        gaps = np.diff(distinct)
        gaps = gaps[gaps > 1e-9 * max(1.0, float(np.abs(distinct).max(initial=0.0)))]
        step = float(gaps.min()) if gaps.size else 1.0
        out[:, axis] = np.round((values - (distinct[0] if distinct.size else 0.0)) / step)
    return out


def coords_graph(coords: np.ndarray, dist_thr: float = 1.5, norm_adj: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The graph a graph model gets when a bag comes with coords only: the 8-neighbour grid of its patches
    (:func:`grid_units`, then :func:`bag_adj`, the datasets' default: radius 1.5, symmetric normalisation,
    float32; a one-instance bag has one self-loop).

    Args:
        coords: (N, 2) patch coordinates (pixels or grid units).

    Returns:
        edge_index (2, E) int64, edge_weight (E,) float32.
    """
    return bag_adj(grid_units(coords), dist_thr=dist_thr, norm_adj=norm_adj)
