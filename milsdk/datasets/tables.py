"""CSV tables that name bags: benchmark split files (``splits.csv``) and per-slide label tables."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from milsdk.errors import DatasetError, DatasetNotFoundError

__all__ = [
    "keep_only_existing_files",
    "read_csv",
    "read_label_table",
    "read_split",
    "split_bag_names",
    "strip_slide_extension",
]

logger = logging.getLogger(__name__)

# Extensions of slide and feature files that label tables often keep in their name column.
_SLIDE_EXTENSIONS = {
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".vms",
    ".vmu",
    ".bif",
    ".czi",
    ".dcm",
    ".h5",
    ".hdf5",
    ".npy",
    ".pt",
    ".png",
    ".jpg",
    ".jpeg",
}


def read_csv(file: str | Path, required_columns: Sequence[str] = ()) -> list[dict[str, str]]:
    """Read a CSV file with a header row into one dict per row, checking that the needed columns exist.

    Args:
        file: the CSV file (``file``, as torchmil names it).
        required_columns: column names that must be in the header.

    Returns:
        rows, each ``{column: value}`` with surrounding whitespace stripped.
    """
    path = Path(file)
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: file not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read CSV ({' '.join(str(exc).split())})") from exc
    missing = [c for c in required_columns if c not in columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; found columns {columns}")
    return rows


def read_split(
    path: str | Path, partition: str, name_col: str = "bag_name", split_col: str = "split"
) -> list[str]:
    """Bag names of one partition of a ``splits.csv`` (columns ``bag_name`` and ``split``), in file order.

    Args:
        path: the CSV file.
        partition: the value of ``split`` to keep, e.g. ``"train"`` or ``"test"``.

    Returns:
        the names whose ``split`` equals ``partition``.
    """
    rows = read_csv(path, (name_col, split_col))
    names = [row[name_col] for row in rows if row[split_col] == partition]
    if not names:
        found = sorted({row[split_col] for row in rows})
        raise DatasetError(f"{path}: no bags with {split_col} == '{partition}'; splits in file: {found}")
    return names


def strip_slide_extension(name: str) -> str:
    """``"slide_1.svs"`` -> ``"slide_1"``; names without a slide/feature extension are kept (``"a.b"`` stays)."""
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in _SLIDE_EXTENSIONS else name


def _parse_label(value: str, path: Path, column: str, name: str) -> int | float:
    try:
        number = float(value)
    except ValueError:
        raise DatasetError(
            f"{path}: label {value!r} of bag '{name}' in column '{column}' is not a number"
        ) from None
    return int(number) if number.is_integer() else number


def read_label_table(path: str | Path, name_col: str, label_col: str) -> dict[str, int | float]:
    """Labels from a CSV table: one row per bag, the bag name (slide extension stripped) and a numeric label.

    Returns:
        ``{bag_name: label}``; integral labels are ints.
    """
    path = Path(path)
    rows = read_csv(path, (name_col, label_col))
    table: dict[str, int | float] = {}
    for row in rows:
        name = strip_slide_extension(row[name_col])
        table[name] = _parse_label(row[label_col], path, label_col, name)
    return table


def keep_only_existing_files(path: str | Path, names: Iterable[str], ext: str = ".npy") -> list[str]:
    """Keep the names for which ``path/<name><ext>`` is a file (order kept); log how many were dropped."""
    path = Path(path)
    names = list(names)
    kept = [n for n in names if (path / f"{n}{ext}").is_file()]
    if len(kept) < len(names):
        logger.warning(
            "%s: %d of %d bags have no '%s' file and are skipped",
            path,
            len(names) - len(kept),
            len(names),
            ext,
        )
    return kept


def split_bag_names(
    splits_csv: str | Path, partition: str, features_dir: str | Path, ext: str = ".npy"
) -> list[str]:
    """Bags of one partition of a benchmark's ``splits.csv`` that have a features file, in file order.

    Args:
        splits_csv: the CSV with columns ``bag_name`` and ``split``.
        partition: e.g. ``"train"`` or ``"test"``.
        features_dir: the folder holding ``<bag><ext>`` features.
        ext: the features' extension.
    """
    features_dir = Path(features_dir)
    if not features_dir.is_dir():
        raise DatasetNotFoundError(f"{features_dir}: features folder not found")
    names = read_split(splits_csv, partition)
    kept = keep_only_existing_files(features_dir, names, ext)
    if not kept:
        raise DatasetError(
            f"{features_dir}: none of the {len(names)} '{partition}' bags of {splits_csv} has a '{ext}' file"
        )
    return kept
