"""Graph utilities: hand-computed degrees and normalisations, radius graphs against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from milsdk.utils import add_self_loops, build_adj, degree, normalize_adj
from milsdk.utils.graph import bag_adj


def brute_force_pairs(coords: np.ndarray, thr: float) -> set[tuple[int, int]]:
    diff = coords[:, None, :] - coords[None, :, :]
    dist = np.sqrt((diff**2).sum(-1))
    i, j = np.nonzero(dist <= thr)
    return {(int(a), int(b)) for a, b in zip(i, j) if a != b}


def grid(rows: int, cols: int) -> np.ndarray:
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return np.stack([r.ravel(), c.ravel()], axis=1)


def test_degree_sums_weights_of_outgoing_edges():
    index = np.array([[0, 0, 1, 2], [1, 2, 0, 0]])
    assert degree(index).tolist() == [2.0, 1.0, 1.0]
    assert degree(index, np.array([0.5, 2.0, 1.0, 3.0])).tolist() == [2.5, 1.0, 3.0]
    assert degree(index, n_nodes=5).tolist() == [2.0, 1.0, 1.0, 0.0, 0.0]
    assert degree(index).dtype == np.float32


def test_add_self_loops_appends_one_loop_per_node():
    index = np.array([[0, 1], [1, 0]])
    ei, ew = add_self_loops(index, np.array([0.5, 0.5]), n_nodes=3)
    assert ei.tolist() == [[0, 1, 0, 1, 2], [1, 0, 0, 1, 2]]
    assert ew.tolist() == [0.5, 0.5, 1.0, 1.0, 1.0]
    assert ei.dtype == np.int64 and ew.dtype == np.float32


def test_normalize_adj_is_symmetric_normalisation_by_hand():
    # Path 0 - 1 - 2 (both directions): degrees 1, 2, 1 -> every edge 1 / sqrt(1 * 2).
    index = np.array([[0, 1, 1, 2], [1, 0, 2, 1]])
    np.testing.assert_allclose(normalize_adj(index), [1 / np.sqrt(2)] * 4, rtol=1e-6)
    # Weighted: w(0,1) = 2, w(1,2) = 1 -> d = (2, 3, 1); w~(0,1) = 2 / sqrt(6), w~(1,2) = 1 / sqrt(3).
    w = normalize_adj(index, np.array([2.0, 2.0, 1.0, 1.0]))
    np.testing.assert_allclose(w, [2 / np.sqrt(6), 2 / np.sqrt(6), 1 / np.sqrt(3), 1 / np.sqrt(3)], rtol=1e-6)
    assert w.dtype == np.float32


def test_normalize_adj_zero_degree_gives_zero_weight():
    index = np.array([[0, 1], [1, 0]])
    assert normalize_adj(index, np.array([0.0, 0.0])).tolist() == [0.0, 0.0]


def test_build_adj_3x3_grid_is_8_neighbourhood():
    ei, ew = build_adj(grid(3, 3), dist_thr=1.5)
    # 3x3 king graph: 6 horizontal + 6 vertical + 8 diagonal undirected edges, both directions.
    assert ei.shape == (2, 40) and ew.shape == (40,)
    assert ei.dtype == np.int64 and ew.dtype == np.float32
    assert np.all(ew == 1.0)
    neighbours_of_centre = sorted(ei[1, ei[0] == 4].tolist())
    assert neighbours_of_centre == [0, 1, 2, 3, 5, 6, 7, 8]
    assert sorted(ei[1, ei[0] == 0].tolist()) == [1, 3, 4]
    # Sorted by (source, target).
    key = ei[0] * 9 + ei[1]
    assert np.all(np.diff(key) > 0)


def test_build_adj_4_neighbourhood_below_sqrt2():
    ei, _ = build_adj(grid(3, 3), dist_thr=1.0)
    assert ei.shape[1] == 24  # 12 undirected edges
    assert sorted(ei[1, ei[0] == 4].tolist()) == [1, 3, 5, 7]


def test_build_adj_distance_equal_to_threshold_is_an_edge():
    coords = np.array([[0.0, 0.0], [0.3, 0.4]])  # distance exactly 0.5
    ei, _ = build_adj(coords, dist_thr=0.5)
    assert ei.tolist() == [[0, 1], [1, 0]]


@pytest.mark.parametrize(
    ("n", "d", "thr", "scale"),
    [(500, 2, 0.7, 10.0), (300, 3, 0.9, 5.0), (200, 1, 0.05, 3.0), (400, 2, 1.5, 1000.0)],
)
def test_build_adj_matches_brute_force(n, d, thr, scale):
    coords = np.random.default_rng(n).uniform(0, scale, size=(n, d))
    if scale == 1000.0:
        coords = np.round(coords / 50)  # integer grid with duplicates: points on the same cell
    ei, _ = build_adj(coords, dist_thr=thr)
    assert {(int(a), int(b)) for a, b in ei.T} == brute_force_pairs(coords, thr)


def test_build_adj_huge_extent_falls_back_to_exact_search():
    coords = np.array([[0.0, 0.0], [1.0, 0.0], [1e30, 1e30], [1e30 + 1e15, 1e30]])
    ei, _ = build_adj(coords, dist_thr=1.0)
    assert {(int(a), int(b)) for a, b in ei.T} == {(0, 1), (1, 0)}


def test_build_adj_feature_weights():
    coords = np.array([[0, 0], [0, 1], [5, 5]])
    feat = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]], dtype=np.float32)  # ||f0 - f1|| = 5, D = 2
    ei, ew = build_adj(coords, feat=feat, dist_thr=1.5)
    assert ei.tolist() == [[0, 1], [1, 0]]
    np.testing.assert_allclose(ew, [np.exp(-5 / 2)] * 2, rtol=1e-6)


def test_build_adj_no_edges_and_self_loops():
    ei, ew = build_adj(np.array([[0, 0], [10, 10]]), dist_thr=1.5)
    assert ei.shape == (2, 0) and ew.shape == (0,)
    ei, ew = build_adj(np.array([[0, 0], [10, 10]]), dist_thr=1.5, add_self_loops=True)
    assert ei.tolist() == [[0, 1], [0, 1]] and ew.tolist() == [1.0, 1.0]
    ei, ew = build_adj(np.zeros((0, 2)), dist_thr=1.5)
    assert ei.shape == (2, 0)


def test_build_adj_accepts_1d_coords_as_a_line():
    ei, _ = build_adj(np.arange(4), dist_thr=1.1)
    assert ei.tolist() == [[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]]


def test_build_adj_rejects_bad_input():
    with pytest.raises(ValueError, match="dist_thr"):
        build_adj(grid(2, 2), dist_thr=0)
    with pytest.raises(ValueError, match="NaN"):
        build_adj(np.array([[0.0, np.nan]]), dist_thr=1.0)
    with pytest.raises(ValueError, match="rows"):
        build_adj(grid(2, 2), feat=np.zeros((3, 2)), dist_thr=1.0)


def test_build_adj_100k_grid_edge_count():
    rows, cols = 400, 250
    ei, ew = build_adj(grid(rows, cols), dist_thr=1.5)
    undirected = rows * (cols - 1) + (rows - 1) * cols + 2 * (rows - 1) * (cols - 1)
    assert ei.shape == (2, 2 * undirected)
    assert ew.dtype == np.float32


def test_bag_adj_one_instance_is_a_self_loop():
    ei, ew = bag_adj(np.array([[3, 4]]))
    assert ei.tolist() == [[0], [0]] and ew.tolist() == [1.0]


def test_bag_adj_normalises_by_default():
    ei, ew = bag_adj(grid(3, 3), dist_thr=1.5)
    dense = np.zeros((9, 9))
    dense[ei[0], ei[1]] = ew
    np.testing.assert_allclose(dense[0, 1], 1 / np.sqrt(3 * 5), rtol=1e-6)  # corner (deg 3) - edge (deg 5)
    np.testing.assert_allclose(dense[4, 0], 1 / np.sqrt(8 * 3), rtol=1e-6)  # centre (deg 8) - corner
    _, raw = bag_adj(grid(3, 3), dist_thr=1.5, norm_adj=False)
    assert np.all(raw == 1.0)
