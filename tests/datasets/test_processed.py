"""ProcessedMILDataset on real per-key folder layouts (.npy and .h5)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from milsdk.data import collate_fn
from milsdk.datasets import ProcessedMILDataset
from milsdk.datasets.processed import sparse_bag_adj
from milsdk.errors import DatasetError


def make(folders, **kwargs) -> ProcessedMILDataset:
    return ProcessedMILDataset(
        features_path=folders.get("features"),
        labels_path=folders.get("labels"),
        inst_labels_path=folders.get("inst_labels"),
        coords_path=folders.get("coords"),
        **kwargs,
    )


def test_keys_shapes_dtypes(tmp_path, layout, three_bags):
    ds = make(layout.write_bags(tmp_path, three_bags))
    bag = ds[0]  # "a": 9 instances on a 3x3 grid
    assert list(bag.keys()) == ["X", "Y", "y_inst", "adj", "coords"]
    assert bag.batch_size == torch.Size([])
    assert bag["X"].shape == (9, 3) and bag["X"].dtype == torch.float32
    torch.testing.assert_close(bag["X"], torch.from_numpy(three_bags["a"]["features"]).float())
    assert bag["Y"].shape == () and bag["Y"].dtype == torch.int64 and bag["Y"].item() == 1
    assert bag["y_inst"].shape == (9,) and bag["y_inst"].dtype == torch.int64 and bag["y_inst"][1] == 1
    assert bag["coords"].shape == (9, 2) and bag["coords"].dtype == torch.int64
    adj = bag["adj"]
    assert adj.is_sparse and adj.shape == (9, 9) and adj.dtype == torch.float32 and adj.is_coalesced()


def test_bags_are_sorted_by_name_and_other_files_ignored(tmp_path, layout, three_bags):
    folders = layout.write_bags(tmp_path, three_bags)
    (folders["features"] / "notes.txt").write_text("not a bag")
    ds = make(folders)
    assert ds.get_bag_names() == ["a", "b", "c"] and len(ds) == 3
    assert [ds[i]["X"].shape[0] for i in range(3)] == [9, 4, 1]
    assert ds[-1]["X"].shape[0] == 1
    with pytest.raises(IndexError):
        ds[3]
    assert make(folders, bag_names=["c", "a"]).get_bag_names() == ["a", "c"]


def test_adj_on_3x3_grid_by_hand(tmp_path, layout, three_bags):
    adj = make(layout.write_bags(tmp_path, three_bags))[0]["adj"].to_dense().numpy()
    # Instances 0..8 row-major on a 3x3 grid, 8-neighbour: degree 3 at corners, 5 on edges, 8 at the centre;
    # normalised weight 1 / sqrt(d_i d_j), no self-loops.
    assert np.count_nonzero(adj) == 40
    np.testing.assert_allclose(adj, adj.T)
    np.testing.assert_allclose(np.diag(adj), 0.0)
    np.testing.assert_allclose(adj[0, 1], 1 / np.sqrt(15), rtol=1e-6)  # corner - edge
    np.testing.assert_allclose(adj[0, 4], 1 / np.sqrt(24), rtol=1e-6)  # corner - centre
    np.testing.assert_allclose(adj[1, 4], 1 / np.sqrt(40), rtol=1e-6)  # edge - centre
    np.testing.assert_allclose(adj[1, 3], 1 / 5, rtol=1e-6)  # edge - edge, diagonal
    np.testing.assert_allclose(adj[1, 2], 1 / np.sqrt(15), rtol=1e-6)
    assert adj[0, 2] == 0 and adj[0, 8] == 0


def test_adj_options(tmp_path, layout, three_bags):
    folders = layout.write_bags(tmp_path, three_bags)
    raw = make(folders, norm_adj=False)[0]["adj"].to_dense()
    assert set(raw.unique().tolist()) == {0.0, 1.0} and raw.sum() == 40
    weighted = make(folders, norm_adj=False, adj_with_dist=True)[0]["adj"].to_dense()
    X = three_bags["a"]["features"]
    expected = np.exp(-np.linalg.norm(X[0] - X[1]) / 3)
    np.testing.assert_allclose(weighted[0, 1].item(), expected, rtol=1e-5)
    four = make(folders, dist_thr=1.0)[0]["adj"].to_dense()
    assert torch.count_nonzero(four) == 24


def test_one_instance_bag_gets_a_self_loop(tmp_path, layout, three_bags):
    adj = make(layout.write_bags(tmp_path, three_bags))[2]["adj"]
    assert adj.to_dense().tolist() == [[1.0]]


def test_sparse_bag_adj_is_really_coalesced():
    coords = np.random.default_rng(0).integers(0, 6, size=(60, 2))  # duplicate positions included
    adj = sparse_bag_adj(coords, dist_thr=1.5)
    recomputed = torch.sparse_coo_tensor(adj.indices(), adj.values(), adj.shape).coalesce()
    assert torch.equal(adj.indices(), recomputed.indices()) and torch.equal(adj.values(), recomputed.values())


def test_batches_through_collate(tmp_path, layout, three_bags):
    ds = make(layout.write_bags(tmp_path, three_bags))
    batch = collate_fn([ds[0], ds[1]])
    assert batch["X"].shape == (2, 9, 3) and batch["adj"].dtype == torch.float32
    assert batch["mask"].sum(1).tolist() == [9, 4]


def test_h5_layout(tmp_path, layout, three_bags):
    ds = make(layout.write_bags(tmp_path, three_bags, ext=".h5"), file_ext=".h5")
    assert ds.get_bag_names() == ["a", "b", "c"]
    assert ds[1]["X"].shape == (4, 3) and ds[1]["X"].dtype == torch.float32
    assert ds[0]["adj"].to_dense().count_nonzero() == 40


def test_cache_and_copies(tmp_path, layout, three_bags):
    folders = layout.write_bags(tmp_path, three_bags)
    ds = make(folders, load_at_init=True, verbose=False)
    assert set(ds.loaded_bags) == {"a", "b", "c"}
    bag = ds[0]
    del bag["adj"]
    assert "adj" in ds[0]
    lazy = make(folders)
    assert lazy.loaded_bags == {}
    lazy[1]
    assert list(lazy.loaded_bags) == ["b"]


def test_bag_keys_subset_and_default(tmp_path, layout, three_bags):
    folders = layout.write_bags(tmp_path, three_bags)
    ds = make(folders, bag_keys=["X", "Y"])
    assert list(ds[0].keys()) == ["X", "Y"]
    only = ProcessedMILDataset(features_path=folders["features"], labels_path=folders["labels"])
    assert list(only[0].keys()) == ["X", "Y"]  # default keys: those the given folders can provide


def test_get_bag_labels_and_subset(tmp_path, layout, three_bags):
    ds = make(layout.write_bags(tmp_path, three_bags))
    assert [int(y) for y in ds.get_bag_labels()] == [1, 0, 0]
    ds[2]
    sub = ds.subset([2, 0])
    assert sub.get_bag_names() == ["c", "a"] and len(sub) == 2
    assert sub[0]["X"].shape == (1, 3)
    assert sub.loaded_bags["c"] is ds.loaded_bags["c"]
    assert ds.get_bag_names() == ["a", "b", "c"]


def test_custom_read_file_fn(tmp_path, layout, three_bags):
    folders = layout.write_bags(tmp_path, three_bags)
    calls = []

    def read(path, key_type):
        calls.append(key_type)
        return np.load(path)

    ds = make(folders, read_file_fn=read)
    ds[0]
    assert sorted(calls) == ["coords", "features", "inst_labels", "labels"]

    def broken(path, key_type):
        raise KeyError("boom")

    with pytest.raises(DatasetError, match=r"a\.npy: error reading file \('boom'\)"):
        make(folders, read_file_fn=broken)[0]


# ---- bad input: one-line DatasetError naming the file or key ----------------------------------------------


def test_missing_label_file_names_bag_and_path(tmp_path, layout, three_bags):
    folders = layout.write_bags(tmp_path, three_bags)
    (folders["labels"] / "b.npy").unlink()
    with pytest.raises(DatasetError) as err:
        make(folders)
    msg = str(err.value)
    assert "bag 'b'" in msg and str(folders["labels"] / "b.npy") in msg and "label file not found" in msg


def test_h5_without_features_dataset(tmp_path, layout, three_bags):
    folders = layout.write_bags(tmp_path, three_bags, ext=".h5")
    bad = folders["features"] / "a.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("embeddings", data=np.zeros((9, 3)))
    with pytest.raises(DatasetError) as err:
        make(folders, file_ext=".h5")[0]
    assert str(bad) in str(err.value) and "['embeddings']" in str(err.value)


def test_bag_with_zero_instances(tmp_path, layout, three_bags):
    three_bags["b"]["features"] = np.zeros((0, 3))
    folders = layout.write_bags(tmp_path, three_bags)
    ds = make(folders, bag_keys=["X", "Y"])
    with pytest.raises(DatasetError, match=r"b\.npy: bag has 0 instances"):
        ds[1]


def test_missing_folder(tmp_path, layout, three_bags):
    folders = layout.write_bags(tmp_path, three_bags)
    folders["coords"] = tmp_path / "no_coords"
    with pytest.raises(DatasetError, match=r"coords_path .*no_coords: folder not found"):
        make(folders)
    with pytest.raises(DatasetError, match=r"features_path .*nowhere: folder not found"):
        ProcessedMILDataset(features_path=tmp_path / "nowhere", bag_keys=["X"])


def test_unknown_extension(tmp_path, layout, three_bags):
    folders = layout.write_bags(tmp_path, three_bags)
    with pytest.raises(DatasetError, match=r"file_ext '\.txt': unknown extension"):
        make(folders, file_ext=".txt")


def test_coords_and_features_disagree_on_n(tmp_path, layout, three_bags):
    three_bags["b"]["coords"] = np.zeros((5, 2), dtype=np.int64)
    folders = layout.write_bags(tmp_path, three_bags)
    with pytest.raises(DatasetError) as err:
        make(folders)[1]
    msg = str(err.value)
    assert (
        str(folders["coords"] / "b.npy") in msg and "N=5" in msg and str(folders["features"] / "b.npy") in msg
    )


def test_key_without_its_folder(tmp_path, layout, three_bags):
    folders = layout.write_bags(tmp_path, three_bags)
    with pytest.raises(DatasetError, match=r"bag key 'y_inst' needs inst_labels_path"):
        ProcessedMILDataset(features_path=folders["features"], bag_keys=["X", "y_inst"])
    with pytest.raises(DatasetError, match=r"bag key 'adj' needs coords_path"):
        ProcessedMILDataset(features_path=folders["features"], bag_keys=["X", "adj"])
    with pytest.raises(DatasetError, match=r"unknown key 'mask'"):
        ProcessedMILDataset(features_path=folders["features"], bag_keys=["X", "mask"])


def test_empty_features_folder(tmp_path):
    (tmp_path / "f").mkdir()
    with pytest.raises(DatasetError, match=r"features_path .*f: no '\*\.npy' files"):
        ProcessedMILDataset(features_path=tmp_path / "f", bag_keys=["X"])
