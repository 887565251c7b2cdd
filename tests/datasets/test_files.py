"""default_read_file: .npy and .h5 (with STAMP / TRIDENT aliases), and errors naming the file."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from milsdk.datasets import default_read_file
from milsdk.errors import DatasetError


def test_reads_npy(tmp_path, layout):
    path = layout.write_array(tmp_path / "a.npy", np.arange(6, dtype=np.float32).reshape(3, 2))
    out = default_read_file(path, "features")
    assert out.shape == (3, 2) and out.dtype == np.float32 and out[2, 1] == 5


def test_reads_h5_dataset_named_by_key_type(tmp_path):
    path = tmp_path / "slide.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.ones((4, 3)))
        f.create_dataset("coords", data=np.arange(8).reshape(4, 2))
    assert default_read_file(path, "features").shape == (4, 3)
    assert default_read_file(path, "coords")[3].tolist() == [6, 7]


@pytest.mark.parametrize(("key_type", "stored_as"), [("features", "feats"), ("inst_labels", "patch_labels")])
def test_reads_h5_aliases(tmp_path, layout, key_type, stored_as):
    path = layout.write_array(tmp_path / "slide.h5", np.full((2, 5), 7.0), h5_key=stored_as)
    assert default_read_file(path, key_type).sum() == 70.0


def test_h5_without_features_names_file_and_lists_datasets(tmp_path):
    path = tmp_path / "slide.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=np.zeros((2, 2)))
        f.create_dataset("meta/embeddings", data=np.zeros((2, 3)))
    with pytest.raises(DatasetError) as err:
        default_read_file(path, "features")
    msg = str(err.value)
    assert str(path) in msg and "'features'" in msg and "'feats'" in msg
    assert "['coords', 'meta/embeddings']" in msg and "\n" not in msg


def test_unknown_extension(tmp_path):
    path = tmp_path / "bag.csv"
    path.write_text("1,2\n")
    with pytest.raises(DatasetError, match=r"bag\.csv: unknown file extension '\.csv'"):
        default_read_file(path, "features")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.npy: file not found"):
        default_read_file(tmp_path / "nope.npy", "features")
    with pytest.raises(DatasetError, match=r"nope\.h5: file not found"):
        default_read_file(tmp_path / "nope.h5", "features")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DatasetError, match=r"bad\.h5: cannot read \.h5 file"):
        default_read_file(tmp_path / "bad.h5", "features")


def test_pickled_npy_is_refused(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match=r"obj\.npy: cannot read \.npy file"):
        default_read_file(path, "features")
