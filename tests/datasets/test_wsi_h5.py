"""WSIH5Dataset (CLAM / TRIDENT / STAMP .h5 per slide) and TridentWSIDataset (TRIDENT's output folder)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from milsdk.datasets import TridentWSIDataset, WSIH5Dataset
from milsdk.errors import DatasetError


def write_slide(path, features, coords, features_name="features", coords_in_file=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset(features_name, data=features)
        if coords_in_file:
            f.create_dataset("coords", data=coords)


@pytest.fixture
def clam_dir(tmp_path, layout, rng):
    """CLAM-style h5_files/: slide_b (2x2 patches of 256 px at offset 4096), slide_a (3 patches in a row)."""
    feats = tmp_path / "h5_files"
    write_slide(
        feats / "slide_b.h5",
        rng.normal(size=(4, 6)).astype(np.float32),
        layout.grid_coords(2, 2, step=256, offset=4096),
    )
    write_slide(
        feats / "slide_a.h5", rng.normal(size=(3, 6)).astype(np.float16), layout.grid_coords(1, 3, step=256)
    )
    layout.write_csv(
        tmp_path / "labels.csv",
        ["case_id", "slide_id", "label"],
        [["c1", "slide_a.svs", 1], ["c2", "slide_b.svs", 0]],
    )
    return tmp_path


def test_clam_layout_with_csv_labels(clam_dir):
    ds = WSIH5Dataset(clam_dir / "h5_files", labels_path=clam_dir / "labels.csv")
    assert ds.get_bag_names() == ["slide_a", "slide_b"]
    bag = ds[1]
    assert list(bag.keys()) == ["X", "Y", "adj", "coords"]
    assert bag["X"].shape == (4, 6) and bag["X"].dtype == torch.float32
    assert bag["Y"].shape == () and bag["Y"].item() == 0 and bag["Y"].dtype == torch.int64
    # Patch stride inferred (256 px), grid shifted to 0.
    assert bag["coords"].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    adj = bag["adj"].to_dense()
    assert torch.count_nonzero(adj) == 12  # 2x2 grid, 8-neighbour (dist_thr sqrt(2)): all 6 pairs
    np.testing.assert_allclose(adj[0, 3].item(), 1 / 3, rtol=1e-6)
    assert ds[0]["X"].dtype == torch.float32  # stored as float16
    assert [int(y) for y in ds.get_bag_labels()] == [1, 0]


def test_unlabelled_slides_and_explicit_patch_size(clam_dir):
    ds = WSIH5Dataset(clam_dir / "h5_files", patch_size=128)
    assert list(ds[0].keys()) == ["X", "adj", "coords"]
    assert ds[0]["coords"].tolist() == [[0, 0], [0, 2], [0, 4]]
    assert torch.count_nonzero(ds[0]["adj"].to_dense()) == 0  # 2 cells apart: no neighbours


def test_stamp_feats_name(tmp_path, layout):
    write_slide(
        tmp_path / "stamp" / "s.h5",
        np.ones((2, 3)),
        np.array([[0.0, 0.0], [112.0, 0.0]]),
        features_name="feats",
    )
    bag = WSIH5Dataset(tmp_path / "stamp")[0]
    assert bag["X"].shape == (2, 3) and bag["coords"].tolist() == [[0, 0], [1, 0]]


def test_features_dataset_missing(tmp_path, layout):
    bad = tmp_path / "slides" / "s.h5"
    bad.parent.mkdir()
    with h5py.File(bad, "w") as f:
        f.create_dataset("coords", data=np.zeros((2, 2)))
        f.create_dataset("tile_embeddings", data=np.zeros((2, 3)))
    with pytest.raises(DatasetError) as err:
        WSIH5Dataset(tmp_path / "slides")[0]
    msg = str(err.value)
    assert str(bad) in msg and "no dataset 'features'" in msg and "['coords', 'tile_embeddings']" in msg


def test_coords_missing_from_features_file(tmp_path):
    write_slide(tmp_path / "slides" / "s.h5", np.ones((2, 3)), None, coords_in_file=False)
    with pytest.raises(DatasetError, match=r"s\.h5: no dataset 'coords'; datasets in file: \['features'\]"):
        WSIH5Dataset(tmp_path / "slides")[0]
    assert list(WSIH5Dataset(tmp_path / "slides", bag_keys=["X"])[0].keys()) == ["X"]


def test_coords_and_features_disagree(tmp_path, layout):
    write_slide(tmp_path / "slides" / "s.h5", np.ones((3, 2)), layout.grid_coords(1, 2))
    with pytest.raises(DatasetError, match=r"s\.h5: coords have N=2 rows, features .*s\.h5 have N=3"):
        WSIH5Dataset(tmp_path / "slides")[0]


def test_slide_without_csv_row(clam_dir, layout):
    layout.write_csv(clam_dir / "labels.csv", ["slide_id", "label"], [["slide_a", 1]])
    with pytest.raises(DatasetError, match=r"labels\.csv: no row for slide 'slide_b' in column 'slide_id'"):
        WSIH5Dataset(clam_dir / "h5_files", labels_path=clam_dir / "labels.csv")


def test_csv_without_label_column(clam_dir):
    with pytest.raises(DatasetError, match=r"labels\.csv: missing column\(s\) \['target'\]"):
        WSIH5Dataset(clam_dir / "h5_files", labels_path=clam_dir / "labels.csv", wsi_label_col="target")


@pytest.fixture
def trident_dir(tmp_path, layout, rng):
    base = tmp_path / "20x_512px_0px_overlap"
    for name, coords in [
        ("wsi1", layout.grid_coords(3, 3, step=512, offset=2048)),
        ("wsi0", layout.grid_coords(1, 1)),
    ]:
        write_slide(base / "features_uni_v1" / f"{name}.h5", rng.normal(size=(len(coords), 4)), coords)
        write_slide(base / "patches" / f"{name}_patches.h5", np.zeros(1), coords)
        layout.write_array(
            tmp_path / "labels" / f"{name}.h5", np.array([1 if name == "wsi1" else 0]), h5_key="labels"
        )
        layout.write_array(
            tmp_path / "patch_labels" / f"{name}.h5",
            np.eye(1, len(coords), dtype=np.int64)[0],
            h5_key="patch_labels",
        )
    return tmp_path


def test_trident_layout(trident_dir):
    base = trident_dir / "20x_512px_0px_overlap"
    ds = TridentWSIDataset(
        base, trident_dir / "labels", "uni_v1", patch_labels_path=trident_dir / "patch_labels"
    )
    assert ds.get_bag_names() == ["wsi0", "wsi1"]
    bag = ds[1]
    assert list(bag.keys()) == ["X", "Y", "y_inst", "adj", "coords"]
    assert bag["Y"].item() == 1 and bag["y_inst"].tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert bag["coords"][-1].tolist() == [2, 2]
    adj = bag["adj"].to_dense().numpy()
    np.testing.assert_allclose(adj[0, 4], 1 / np.sqrt(24), rtol=1e-6)  # 3x3 grid: corner - centre
    assert ds[0]["adj"].to_dense().tolist() == [[1.0]]  # one patch: a self-loop


def test_trident_without_patch_labels_and_missing_patches_file(trident_dir):
    base = trident_dir / "20x_512px_0px_overlap"
    ds = TridentWSIDataset(base, trident_dir / "labels", "uni_v1", load_at_init=False)
    assert "y_inst" not in ds[0]
    (base / "patches" / "wsi1_patches.h5").unlink()
    with pytest.raises(DatasetError, match=r"bag 'wsi1': coords file not found: .*patches/wsi1_patches\.h5"):
        TridentWSIDataset(base, trident_dir / "labels", "uni_v1")
    with pytest.raises(DatasetError, match=r"bag key 'y_inst' needs patch_labels_path"):
        TridentWSIDataset(base, trident_dir / "labels", "uni_v1", bag_keys=["X", "y_inst"])
