"""Writers of small datasets in the real on-disk layouts (per-key folders of .npy / .h5 files, splits.csv).

Test modules get the writers through the ``layout`` fixture (importing ``conftest`` by name would be ambiguous
with other test folders' conftest files).
"""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

# Folder name and .h5 dataset name of each quantity in the ProcessedMILDataset layout.
KEY_FOLDERS = {"features": "features", "labels": "labels", "inst_labels": "inst_labels", "coords": "coords"}


def write_array(path: Path, array: np.ndarray, h5_key: str = "features") -> Path:
    """Write one array as .npy, or as dataset ``h5_key`` of an .h5 file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, array)
    else:
        with h5py.File(path, "w") as f:
            f.create_dataset(h5_key, data=array)
    return path


def write_bags(root: Path, bags: dict[str, dict[str, np.ndarray]], ext: str = ".npy") -> dict[str, Path]:
    """Write ``{bag: {quantity: array}}`` as ``root/<quantity>/<bag><ext>``; return ``{quantity: folder}``."""
    folders: dict[str, Path] = {}
    for name, quantities in bags.items():
        for quantity, array in quantities.items():
            folder = root / KEY_FOLDERS[quantity]
            write_array(folder / f"{name}{ext}", np.asarray(array), h5_key=quantity)
            folders[quantity] = folder
    return folders


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def grid_coords(rows: int, cols: int, step: int = 1, offset: int = 0) -> np.ndarray:
    """(rows * cols, 2) int64 (row, col) positions times ``step`` plus ``offset``, row-major."""
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return np.stack([r.ravel(), c.ravel()], axis=1).astype(np.int64) * step + offset


@pytest.fixture
def layout() -> SimpleNamespace:
    """The writers of this module: ``write_array``, ``write_bags``, ``write_csv``, ``grid_coords``,
    ``write_wsi_benchmark``."""
    return SimpleNamespace(
        write_array=write_array,
        write_bags=write_bags,
        write_csv=write_csv,
        grid_coords=grid_coords,
        write_wsi_benchmark=write_wsi_benchmark,
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def three_bags(rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """Bags 'b' (negative, 4 instances), 'a' (positive, 9 instances on a 3x3 grid), 'c' (negative, 1 instance).

    Features are float64 (the dataset must give float32), labels (1,), instance labels (N, 1).
    """
    return {
        "b": {
            "features": rng.normal(size=(4, 3)),
            "labels": np.array([0]),
            "inst_labels": np.zeros((4, 1), dtype=np.int64),
            "coords": grid_coords(2, 2),
        },
        "a": {
            "features": rng.normal(size=(9, 3)),
            "labels": np.array([1]),
            "inst_labels": np.array([[0], [1], [0], [0], [0], [0], [0], [0], [0]]),
            "coords": grid_coords(3, 3),
        },
        "c": {
            "features": rng.normal(size=(1, 3)),
            "labels": np.array([0]),
            "inst_labels": np.zeros((1, 1), dtype=np.int64),
            "coords": np.array([[5, 5]]),
        },
    }


def write_wsi_benchmark(
    root: Path, features: str = "UNI", patch_size: int = 512, patch_labels: bool = True
) -> None:
    """A CAMELYON16 / PANDA layout: train slides s1 (positive) and s2 (negative), test slide s3, and a train
    slide s4 listed in splits.csv without a features file."""
    base = root / f"patches_{patch_size}"
    rng = np.random.default_rng(1)
    slides = {
        "s1": (1, grid_coords(2, 3, step=patch_size, offset=1024), np.array([0, 1, 1, 0, 0, 0])),
        "s2": (0, grid_coords(2, 2, step=patch_size, offset=512), np.zeros(4, dtype=np.int64)),
        "s3": (1, grid_coords(1, 2, step=patch_size), np.array([1, 0])),
    }
    for name, (label, coords, inst) in slides.items():
        write_array(
            base / "features" / f"features_{features}" / f"{name}.npy", rng.normal(size=(len(coords), 8))
        )
        write_array(base / "labels" / f"{name}.npy", np.array([label]))
        write_array(base / "coords" / f"{name}.npy", coords)
        if patch_labels:
            write_array(base / "patch_labels" / f"{name}.npy", inst)
    write_csv(
        root / "splits.csv",
        ["bag_name", "split"],
        [["s2", "train"], ["s1", "train"], ["s3", "test"], ["s4", "train"]],
    )
