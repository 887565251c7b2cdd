"""Reading one bag quantity from one file (.npy or .h5) with errors that name the file.

An ``.h5`` file holds its arrays as named datasets; each quantity has a canonical name and the aliases that common
feature extractors write (STAMP names the features ``feats``; TRIDENT names patch labels ``patch_labels``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from milsdk.errors import DatasetError, DatasetNotFoundError

__all__ = ["H5_KEYS", "SUPPORTED_EXTENSIONS", "default_read_file", "h5_dataset_names", "read_h5_dataset"]

SUPPORTED_EXTENSIONS = (".npy", ".h5", ".hdf5")

# key_type -> dataset names tried in order inside an .h5 file.
H5_KEYS: dict[str, tuple[str, ...]] = {
    "features": ("features", "feats"),
    "labels": ("labels", "label"),
    "inst_labels": ("inst_labels", "patch_labels"),
    "coords": ("coords",),
}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def h5_dataset_names(h5file) -> list[str]:
    """Names (full paths, without the leading '/') of every dataset in an open ``h5py.File``."""
    import h5py

    names: list[str] = []
    h5file.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def read_h5_dataset(path: str | Path, names: tuple[str, ...]) -> np.ndarray:
    """Read the first dataset of ``names`` found in an .h5 file.

    Args:
        path: the .h5 file.
        names: dataset names tried in order, e.g. ``("features", "feats")``.

    Returns:
        the array as stored.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: file not found")
    try:
        with h5py.File(path, "r") as f:
            for name in names:
                if name in f and isinstance(f[name], h5py.Dataset):
                    return np.asarray(f[name][()])
            found = h5_dataset_names(f)
    except (OSError, KeyError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read .h5 file ({_one_line(exc)})") from exc
    tried = f"'{names[0]}'" + (
        f" (also tried {', '.join(repr(n) for n in names[1:])})" if len(names) > 1 else ""
    )
    raise DatasetError(f"{path}: no dataset {tried}; datasets in file: {found}")


def default_read_file(file_path: str | Path, key_type: str) -> np.ndarray:
    """Read one quantity of one bag: ``np.load`` for .npy, the named dataset for .h5 / .hdf5.

    Args:
        file_path: the file.
        key_type: ``"features"``, ``"labels"``, ``"inst_labels"`` or ``"coords"`` (the .h5 dataset name; see
            ``H5_KEYS`` for the aliases also accepted).

    Returns:
        the array as stored (e.g. features (N, D), coords (N, d), label (1,) or ()).
    """
    path = Path(file_path)
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise DatasetError(
            f"{path}: unknown file extension '{path.suffix}', expected one of {SUPPORTED_EXTENSIONS}"
        )
    if ext == ".npy":
        if not path.is_file():
            raise DatasetNotFoundError(f"{path}: file not found")
        try:
            # Pickled object arrays could run code from the file: refused.
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path}: cannot read .npy file ({_one_line(exc)})") from exc
    return read_h5_dataset(path, H5_KEYS.get(key_type, (key_type,)))
