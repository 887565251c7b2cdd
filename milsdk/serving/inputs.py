"""Bags from feature files, numpy only: ``.h5`` (CLAM / TRIDENT: datasets ``features`` and ``coords``; STAMP:
``feats``) and ``.npy`` (features (N, D)), given one by one or as folders of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import os
import re

import numpy as np

from milsdk.errors import BagError

__all__ = ["BAG_SUFFIXES", "bag_names", "find_bag_files", "read_bag"]

#: file suffixes read as bags.
BAG_SUFFIXES = (".h5", ".hdf5", ".npy")
# dataset names of the features inside an .h5 file, tried in order (STAMP writes "feats")
_H5_FEATURES = ("features", "feats")
_H5_COORDS = "coords"


def find_bag_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders into the bag files to read.

    Args:
        paths: files (any of :data:`BAG_SUFFIXES`) and folders (their bag files, sorted by name; not recursive).

    Returns:
        The files, in the order given (each folder's files sorted).

    Raises:
        BagError: a path does not exist, a file has another suffix, or a folder holds no bag file.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in BAG_SUFFIXES)
            if not found:
                raise BagError(f"{path}: folder holds no {'/'.join(BAG_SUFFIXES)} files")
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in BAG_SUFFIXES:
                raise BagError(f"{path}: unknown file type {path.suffix!r}, expected one of {', '.join(BAG_SUFFIXES)}")
            files.append(path)
        else:
            raise BagError(f"{path}: no such file or folder")
    return files


def bag_names(paths: Iterable[str | Path]) -> list[str]:
    """One distinct name per path, for outputs named after bags (CSV rows, ``<name>.npy``, ``<name>.png``).

    A bag is named by its file stem (``slides/a.h5`` -> ``a``). Where two paths share a stem, both are named by
    their file name (``a.h5``, ``a.npy``); where those clash too (the same file name in two folders), by the path
    below the folder the clashing paths share, with ``__`` for ``/`` (``site1__a.h5``, ``site2__a.h5``). Names
    are compared as the file names they become (case-insensitive, characters outside [A-Za-z0-9._-] counted as
    ``_``), so no output file overwrites another on any file system. Give each file once: the same path twice
    gets two names (``-2`` appended to the second).

    Returns:
        The names, in the order of ``paths``.
    """
    paths = [Path(p) for p in paths]

    def key(name: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]", "_", name).lower()

    def clashing(names: list[str], among: list[int]) -> set[int]:
        seen: dict[str, list[int]] = {}
        for i in among:
            seen.setdefault(key(names[i]), []).append(i)
        return {i for group in seen.values() if len(group) > 1 for i in group}

    names = [p.stem for p in paths]
    clash = clashing(names, list(range(len(paths))))
    for i in clash:
        names[i] = paths[i].name
    clash = clashing(names, sorted(clash))
    if clash:
        resolved = {i: Path(os.path.abspath(paths[i])) for i in clash}
        common = Path(os.path.commonpath([str(r.parent) for r in resolved.values()]))
        for i, r in resolved.items():
            names[i] = "__".join(r.relative_to(common).parts)
    used: set[str] = set()
    for i, name in enumerate(names):
        unique, k = name, 2
        while key(unique) in used:  # the same path twice, or names that only differ in case / odd characters
            unique, k = f"{name}-{k}", k + 1
        names[i] = unique
        used.add(key(unique))
    return names


def read_bag(path: str | Path) -> dict[str, Any]:
    """Read one bag file.

    Args:
        path: an ``.h5`` / ``.hdf5`` file (features from ``features`` or ``feats``, ``coords`` when present) or an
            ``.npy`` file of features.

    Returns:
        {"name": file stem, "features": (N, D) array as stored, "coords": (N, 2) array or None}. A leading axis of
        size 1 ((1, N, D), as some extractors write) is dropped.

    Raises:
        BagError: unreadable file, no features dataset, or features that are not (N, D); the message names the file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    coords = None
    if suffix == ".npy":
        try:
            features = np.load(path, allow_pickle=False)  # a pickled array could run code from the file
        except (OSError, ValueError) as exc:
            # numpy reads any file that is not an .npy array as a pickle, which it refuses
            reason = "not an .npy array; pickled data is refused" if "pickle" in str(exc) else _one_line(exc)
            raise BagError(f"{path}: cannot read .npy file ({reason})") from None
    elif suffix in (".h5", ".hdf5"):
        features, coords = _read_h5(path)
    else:
        raise BagError(f"{path}: unknown file type {path.suffix!r}, expected one of {', '.join(BAG_SUFFIXES)}")
    features = _drop_leading_one(features)
    if features.ndim != 2:
        raise BagError(f"{path}: features have shape {features.shape}, expected (N, D)")
    if coords is not None:
        coords = _drop_leading_one(coords)
    return {"name": path.stem, "features": features, "coords": coords}


def _read_h5(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            name = next((n for n in _H5_FEATURES if isinstance(f.get(n), h5py.Dataset)), None)
            if name is None:
                raise BagError(f"{path}: no dataset {' or '.join(map(repr, _H5_FEATURES))}; datasets: {sorted(f)}")
            features = np.asarray(f[name][()])
            coords = np.asarray(f[_H5_COORDS][()]) if isinstance(f.get(_H5_COORDS), h5py.Dataset) else None
    except BagError:  # our own "no dataset" message, not to be wrapped in "cannot read .h5 file (...)"
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise BagError(f"{path}: cannot read .h5 file ({_one_line(exc)})") from None
    return features, coords


def _drop_leading_one(array: np.ndarray) -> np.ndarray:
    return array[0] if array.ndim == 3 and array.shape[0] == 1 else array


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
