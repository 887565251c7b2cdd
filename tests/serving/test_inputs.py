import h5py
import numpy as np
import pytest

from milsdk.errors import BagError
from milsdk.serving.inputs import find_bag_files, read_bag


def write_h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f.create_dataset(name, data=value)
    return path


def test_clam_trident_h5_with_features_and_coords(tmp_path):
    features = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    coords = np.arange(14).reshape(7, 2) * 256
    bag = read_bag(write_h5(tmp_path / "slide_1.h5", features=features, coords=coords))
    assert bag["name"] == "slide_1"
    np.testing.assert_array_equal(bag["features"], features)
    np.testing.assert_array_equal(bag["coords"], coords)


def test_stamp_feats_and_a_leading_axis_of_one(tmp_path):
    feats = np.ones((1, 5, 3), np.float16)
    bag = read_bag(write_h5(tmp_path / "stamp.h5", feats=feats, coords=np.zeros((1, 5, 2))))
    assert bag["features"].shape == (5, 3) and bag["features"].dtype == np.float16
    assert bag["coords"].shape == (5, 2)


def test_npy_features(tmp_path):
    np.save(tmp_path / "bag.npy", np.zeros((3, 2), np.float32))
    bag = read_bag(tmp_path / "bag.npy")
    assert bag == {"name": "bag", "features": bag["features"], "coords": None}
    assert bag["features"].shape == (3, 2)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: write_h5(p / "x.h5", coords=np.zeros((3, 2))), "no dataset 'features' or 'feats'; datasets: ['coo"),
        (lambda p: (p / "x.h5").write_bytes(b"not hdf5") and p / "x.h5", "cannot read .h5 file"),
        (lambda p: (p / "x.npy").write_bytes(b"garbage") and p / "x.npy", "cannot read .npy file"),
        (lambda p: np.save(p / "x.npy", np.array([{"a": 1}], dtype=object)) or p / "x.npy", "cannot read .npy file"),
        (lambda p: np.save(p / "x.npy", np.zeros(4)) or p / "x.npy", "shape (4,), expected (N, D)"),
        (lambda p: (p / "x.txt").write_text("1") and p / "x.txt", "unknown file type '.txt'"),
    ],
)
def test_bad_files_raise_bag_errors_naming_the_file(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(BagError) as info:
        read_bag(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_find_bag_files_expands_folders_in_name_order(tmp_path):
    folder = tmp_path / "feats"
    folder.mkdir()
    for name in ["b.h5", "a.npy", "c.hdf5", "notes.txt"]:
        (folder / name).write_bytes(b"")
    single = tmp_path / "z.npy"
    single.write_bytes(b"")
    assert find_bag_files([single, folder]) == [single, folder / "a.npy", folder / "b.h5", folder / "c.hdf5"]


def test_find_bag_files_errors(tmp_path):
    with pytest.raises(BagError, match="no such file or folder"):
        find_bag_files([tmp_path / "missing.h5"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match="holds no"):
        find_bag_files([tmp_path / "empty"])
    (tmp_path / "x.csv").write_text("")
    with pytest.raises(BagError, match="unknown file type"):
        find_bag_files([tmp_path / "x.csv"])
