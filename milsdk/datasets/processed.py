"""ProcessedMILDataset: bags stored as one file per bag and per quantity (features, labels, instance labels, coords).

On disk, each quantity has its own folder and every folder names a bag's file the same way::

    features_path/<bag><ext>      X       (N, ...) features        .h5 dataset "features" (or "feats")
    labels_path/<bag><ext>        Y       label, e.g. (1,) or ()   .h5 dataset "labels"
    inst_labels_path/<bag><ext>   y_inst  (N,) instance labels     .h5 dataset "inst_labels" (or "patch_labels")
    coords_path/<bag><ext>        coords  (N, d) grid positions    .h5 dataset "coords"

``adj`` is built from ``coords``: an edge between instances at distance <= ``dist_thr`` (8-neighbourhood on an
integer grid for 1.5), optionally weighted by feature distance, normalised D^-1/2 A D^-1/2.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tensordict import TensorDict

from milsdk.datasets.files import SUPPORTED_EXTENSIONS, default_read_file
from milsdk.errors import DatasetError, DatasetNotFoundError, MILSDKError
from milsdk.utils.graph import bag_adj

__all__ = ["DEFAULT_BAG_KEYS", "ProcessedMILDataset", "sparse_bag_adj"]

logger = logging.getLogger(__name__)

DEFAULT_BAG_KEYS = ("X", "Y", "y_inst", "adj", "coords")

# Quantities read from files, in load order (X first: the others are checked against its N).
_QUANTITIES = ("X", "Y", "y_inst", "coords")
_KEY_TYPE = {"X": "features", "Y": "labels", "y_inst": "inst_labels", "coords": "coords"}
_PATH_ARG = {"X": "features_path", "Y": "labels_path", "y_inst": "inst_labels_path", "coords": "coords_path"}
_WHAT = {"X": "features", "Y": "label", "y_inst": "instance label", "coords": "coords"}

ReadFileFn = Callable[[str, str], np.ndarray]


def _path_or_none(path: str | Path | None) -> Path | None:
    return None if path is None else Path(path)


def _is_integral(a: np.ndarray) -> bool:
    return a.dtype.kind in "biu" or (
        a.dtype.kind == "f" and bool(np.all(np.isfinite(a) & (a == np.round(a))))
    )


def sparse_bag_adj(
    coords: np.ndarray, feat: np.ndarray | None = None, dist_thr: float = 1.5, norm_adj: bool = True
) -> torch.Tensor:
    """A bag's adjacency as a tensor (see ``milsdk.utils.graph.bag_adj``).

    Args:
        coords: (N, d) positions.
        feat: optional (N, D) features for distance weights.
        dist_thr: neighbourhood radius.
        norm_adj: normalise to D^-1/2 A D^-1/2.

    Returns:
        (N, N) sparse COO float32, coalesced.
    """
    edge_index, edge_weight = bag_adj(coords, feat=feat, dist_thr=dist_thr, norm_adj=norm_adj)
    n = coords.shape[0]
    # bag_adj's edges are in range, unique and sorted by (source, target), i.e. already coalesced; torch's
    # invariant check and coalesce() would only re-verify that (0.2 s on a 100k-patch slide).
    return torch.sparse_coo_tensor(
        torch.from_numpy(edge_index),
        torch.from_numpy(edge_weight),
        (n, n),
        dtype=torch.float32,
        is_coalesced=True,
        check_invariants=False,
    )


class ProcessedMILDataset(torch.utils.data.Dataset):
    """Bags read from per-quantity folders of ``.npy`` / ``.h5`` files, returned as ``TensorDict``.

    Each bag (``dataset[i]``, a ``TensorDict`` with ``batch_size=[]``) holds the keys of ``bag_keys``:

    - ``X``: (N, D) float32 features (any trailing shape is kept: (N, ...)).
    - ``Y``: the label; a one-value label becomes 0-dim. Integer labels are int64, real ones float32.
    - ``y_inst``: (N,) int64 instance labels (float32 if the file holds non-integral values).
    - ``coords``: (N, d) int64 for integer files, float32 otherwise.
    - ``adj``: (N, N) sparse COO float32, coalesced. A one-instance bag gets a single self-loop of weight 1.

    Bags are named by their file name without extension and ordered by name. Built bags are cached (all at
    init with ``load_at_init``, else on first access); ``dataset[i]`` returns a shallow copy of the cached bag,
    so adding or removing keys does not alter the cache.

    Args:
        features_path: folder of ``<bag><file_ext>`` feature files (key ``X``; also lists the bags).
        labels_path: folder of label files (key ``Y``).
        inst_labels_path: folder of instance-label files (key ``y_inst``).
        coords_path: folder of coordinate files (keys ``coords`` and ``adj``).
        bag_names: the bags to use; None lists ``features_path``.
        bag_keys: keys of each bag. None (default) means every key of ``DEFAULT_BAG_KEYS`` this dataset can
            provide from the paths given; an explicit key whose folder is missing is an error.
        file_ext: ``".npy"``, ``".h5"`` or ``".hdf5"`` (any extension with a custom ``read_file_fn``).
        dist_thr: neighbourhood radius of ``adj`` in coordinate units.
        adj_with_dist: weight edges by ``exp(-||x_i - x_j|| / D)`` instead of 1.
        norm_adj: normalise ``adj`` to D^-1/2 A D^-1/2.
        load_at_init: read every bag in the constructor.
        read_file_fn: ``(path, key_type) -> np.ndarray`` with key_type in features / labels / inst_labels / coords.
        verbose: progress bar for ``load_at_init`` and warnings about inconsistent labels.
    """

    # Constructor argument that gives each quantity's folder, as error messages name it (subclasses rename).
    _ARG_NAMES: ClassVar[dict[str, str]] = _PATH_ARG

    def __init__(
        self,
        features_path: str | Path | None = None,
        labels_path: str | Path | None = None,
        inst_labels_path: str | Path | None = None,
        coords_path: str | Path | None = None,
        bag_names: Iterable[str] | None = None,
        bag_keys: Sequence[str] | None = None,
        file_ext: str = ".npy",
        dist_thr: float = 1.5,
        adj_with_dist: bool = False,
        norm_adj: bool = True,
        load_at_init: bool = False,
        read_file_fn: ReadFileFn = default_read_file,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        self.features_path = _path_or_none(features_path)
        self.labels_path = _path_or_none(labels_path)
        self.inst_labels_path = _path_or_none(inst_labels_path)
        self.coords_path = _path_or_none(coords_path)
        self.file_ext = file_ext if file_ext.startswith(".") else f".{file_ext}"
        self.dist_thr = dist_thr
        self.adj_with_dist = adj_with_dist
        self.norm_adj = norm_adj
        self.read_file_fn = read_file_fn
        self.verbose = verbose
        if read_file_fn is default_read_file and self.file_ext.lower() not in SUPPORTED_EXTENSIONS:
            raise DatasetError(
                f"file_ext '{file_ext}': unknown extension, expected one of {SUPPORTED_EXTENSIONS}"
            )

        self.bag_keys = self._resolve_bag_keys(bag_keys)
        self._needed = self._needed_quantities()
        self._check_folders()
        self.bag_names = self._discover_bag_names(bag_names)
        self._check_bags()
        self.loaded_bags: dict[str, TensorDict] = {}
        if load_at_init:
            self._load_all()

    # ---- configuration -------------------------------------------------------------------------------------

    def _has_source(self, quantity: str) -> bool:
        """Whether ``quantity`` is read by its loader (a folder was given); subclasses add other sources."""
        return getattr(self, _PATH_ARG[quantity]) is not None

    def _derived_keys(self) -> set[str]:
        """Quantities a subclass makes itself when there is no source (e.g. CT slice indices as coords)."""
        return set()

    def _can_provide(self, key: str) -> bool:
        if key == "adj":
            return self._can_provide("coords") and (not self.adj_with_dist or self._can_provide("X"))
        return self._has_source(key) or key in self._derived_keys()

    def _resolve_bag_keys(self, bag_keys: Sequence[str] | None) -> list[str]:
        if bag_keys is None:
            keys = [k for k in DEFAULT_BAG_KEYS if self._can_provide(k)]
            logger.debug("%s: bag keys %s", type(self).__name__, keys)
            return keys
        keys = list(bag_keys)
        for key in keys:
            if key not in DEFAULT_BAG_KEYS:
                raise DatasetError(
                    f"bag_keys: unknown key '{key}', expected some of {list(DEFAULT_BAG_KEYS)}"
                )
            if key == "adj" and not self._can_provide("coords"):
                raise DatasetError(
                    f"bag key 'adj' needs {self._ARG_NAMES['coords']} (the adjacency is built from coords)"
                )
            if key == "adj" and self.adj_with_dist and not self._can_provide("X"):
                raise DatasetError("bag key 'adj' with adj_with_dist=True needs features_path")
            if key != "adj" and not self._can_provide(key):
                raise DatasetError(
                    f"bag key '{key}' needs {self._ARG_NAMES[key]} (or drop '{key}' from bag_keys)"
                )
        return keys

    def _needed_quantities(self) -> set[str]:
        """Quantities to load for the requested keys (subclasses add what their derivations need)."""
        needed = {k for k in self.bag_keys if k in _QUANTITIES}
        if "adj" in self.bag_keys:
            needed.add("coords")
            if self.adj_with_dist:
                needed.add("X")
        return needed

    def _sources(self) -> list[str]:
        """Needed quantities that are read from files, in load order."""
        return [q for q in _QUANTITIES if q in self._needed and self._has_source(q)]

    def _check_folder(self, arg: str, folder: Path) -> None:
        if folder.exists() and not folder.is_dir():
            raise DatasetError(f"{arg} {folder}: is a file, not a folder")
        if not folder.is_dir():
            raise DatasetNotFoundError(f"{arg} {folder}: folder not found")

    def _check_folders(self) -> None:
        for q in self._sources():
            folder = getattr(self, _PATH_ARG[q])
            if folder is not None:
                self._check_folder(self._ARG_NAMES[q], folder)

    def _discover_bag_names(self, bag_names: Iterable[str] | None) -> list[str]:
        if bag_names is not None:
            names = sorted(str(n) for n in bag_names)
            if not names:
                raise DatasetError("bag_names: empty list of bags")
            return names
        if self.features_path is None:
            raise DatasetError("features_path is needed to list the bags (or give bag_names)")
        self._check_folder(self._ARG_NAMES["X"], self.features_path)
        names = sorted(
            p.name[: -len(self.file_ext)]
            for p in self.features_path.iterdir()
            if p.is_file() and p.name.endswith(self.file_ext)
        )
        if not names:
            raise DatasetError(f"features_path {self.features_path}: no '*{self.file_ext}' files")
        return names

    def _file_path(self, quantity: str, name: str) -> Path:
        """Where ``quantity`` of bag ``name`` is stored."""
        return getattr(self, _PATH_ARG[quantity]) / f"{name}{self.file_ext}"

    def _source_name(self, quantity: str, name: str) -> str:
        """How error messages name the origin of ``quantity`` of bag ``name``."""
        return str(self._file_path(quantity, name))

    def _check_bags(self) -> None:
        """Fail early, naming the bag and the expected path, if a needed file is missing."""
        missing = [
            (name, q, self._file_path(q, name))
            for q in self._sources()
            if getattr(self, _PATH_ARG[q]) is not None
            for name in self.bag_names
            if not self._file_path(q, name).is_file()
        ]
        if missing:
            name, q, path = missing[0]
            if path.is_dir():
                raise DatasetError(f"bag '{name}': {_WHAT[q]} file {path} is a directory, not a file")
            more = f" ({len(missing) - 1} more missing files)" if len(missing) > 1 else ""
            raise DatasetNotFoundError(f"bag '{name}': {_WHAT[q]} file not found: {path}{more}")

    # ---- loading hooks -------------------------------------------------------------------------------------

    def _read_file(self, path: Path, key_type: str) -> np.ndarray:
        try:
            return np.asarray(self.read_file_fn(str(path), key_type))
        except MILSDKError:
            raise
        except Exception as exc:  # a user's read_file_fn may raise anything: give it the file's name
            raise DatasetError(f"{path}: error reading file ({' '.join(str(exc).split())})") from exc

    def _load_features(self, name: str) -> np.ndarray:
        return self._read_file(self._file_path("X", name), "features")

    def _load_labels(self, name: str) -> np.ndarray:
        return self._read_file(self._file_path("Y", name), "labels")

    def _load_inst_labels(self, name: str) -> np.ndarray:
        return self._read_file(self._file_path("y_inst", name), "inst_labels")

    def _load_coords(self, name: str) -> np.ndarray:
        return self._read_file(self._file_path("coords", name), "coords")

    def _convert_label(self, name: str, y: np.ndarray) -> np.ndarray:
        """Label -> 0-dim when it holds one value; int64 for integers, float32 for reals."""
        y = np.asarray(y)
        if y.size == 1:
            y = y.reshape(())
        return y.astype(np.int64) if y.dtype.kind in "biu" else y.astype(np.float32)

    def _convert_inst_labels(self, name: str, y_inst: np.ndarray) -> np.ndarray:
        """Instance labels (N, 1, ...) -> (N,); int64 when integral, float32 otherwise."""
        y_inst = np.asarray(y_inst)
        if y_inst.ndim > 1 and all(s == 1 for s in y_inst.shape[1:]):
            y_inst = y_inst.reshape(y_inst.shape[0])
        return y_inst.astype(np.int64) if _is_integral(y_inst) else y_inst.astype(np.float32)

    def _load_bag(self, name: str) -> dict[str, np.ndarray]:
        """Read and check the needed quantities of one bag (numpy arrays, converted dtypes)."""
        loaders = {
            "X": self._load_features,
            "Y": self._load_labels,
            "y_inst": self._load_inst_labels,
            "coords": self._load_coords,
        }
        bag = {q: loaders[q](name) for q in self._sources()}
        n = None
        if "X" in bag:
            X = bag["X"]
            if X.ndim == 0 or X.shape[0] == 0:
                raise DatasetError(f"{self._source_name('X', name)}: bag has 0 instances (shape {X.shape})")
            if X.dtype.kind not in "biuf":
                raise DatasetError(
                    f"{self._source_name('X', name)}: features must be numeric, found {X.dtype}"
                )
            bag["X"] = X = X.astype(np.float32, copy=False)
            finite = np.isfinite(X)
            if not finite.all():
                bad = np.argwhere(~finite)
                raise DatasetError(
                    f"{self._source_name('X', name)}: features contain NaN or inf ({len(bad)} value"
                    f"{'s' if len(bad) > 1 else ''}, the first at instance {bad[0][0]})"
                )
            n = X.shape[0]
        if "coords" in bag:
            coords = bag["coords"]
            coords = coords.reshape(-1, 1) if coords.ndim == 1 else coords
            if coords.ndim != 2 or coords.shape[0] == 0:
                raise DatasetError(
                    f"{self._source_name('coords', name)}: coords must be (N, d) with N > 0, "
                    f"found shape {bag['coords'].shape}"
                )
            if n is not None and coords.shape[0] != n:
                raise DatasetError(
                    f"{self._source_name('coords', name)}: coords have N={coords.shape[0]} rows, "
                    f"features {self._source_name('X', name)} have N={n}"
                )
            bag["coords"] = (
                coords.astype(np.int64) if coords.dtype.kind in "biu" else coords.astype(np.float32)
            )
        if "Y" in bag:
            bag["Y"] = self._convert_label(name, bag["Y"])
        if "y_inst" in bag:
            y_inst = self._convert_inst_labels(name, bag["y_inst"])
            if n is not None and (y_inst.ndim == 0 or y_inst.shape[0] != n):
                raise DatasetError(
                    f"{self._source_name('y_inst', name)}: instance labels have shape "
                    f"{y_inst.shape}, features {self._source_name('X', name)} have N={n}"
                )
            bag["y_inst"] = y_inst
        return bag

    def _build_adj(self, bag: dict[str, np.ndarray]) -> torch.Tensor:
        """(N, N) sparse COO float32 adjacency of a bag from its coords (and features with ``adj_with_dist``)."""
        feat = bag["X"] if self.adj_with_dist else None
        return sparse_bag_adj(bag["coords"], feat=feat, dist_thr=self.dist_thr, norm_adj=self.norm_adj)

    def _build_bag(self, bag: dict[str, np.ndarray]) -> TensorDict:
        """Keep the keys of ``bag_keys`` (adding ``adj``) as tensors."""
        out: dict[str, torch.Tensor] = {}
        for key in self.bag_keys:
            if key == "adj":
                out[key] = self._build_adj(bag)
            else:
                # np.ascontiguousarray would turn a 0-dim label into shape (1,).
                out[key] = torch.from_numpy(np.require(bag[key], requirements="C"))
        return TensorDict(out, batch_size=[])

    def _get_bag(self, name: str) -> TensorDict:
        if name not in self.loaded_bags:
            self.loaded_bags[name] = self._build_bag(self._load_bag(name))
        return self.loaded_bags[name]

    def _load_all(self) -> None:
        from tqdm.auto import tqdm

        for name in tqdm(self.bag_names, desc=f"Loading {type(self).__name__}", disable=not self.verbose):
            self._get_bag(name)

    # ---- public API ----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.bag_names)

    def __getitem__(self, index: int) -> TensorDict:
        """The bag at ``index`` (a shallow copy of the cached ``TensorDict``)."""
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"{type(self).__name__}: index {index} out of range for {len(self)} bags")
        return self._get_bag(self.bag_names[index]).copy()

    def get_bag_names(self) -> list[str]:
        """Bag names in dataset order."""
        return list(self.bag_names)

    def get_bag_labels(self) -> list[np.ndarray]:
        """Every bag's label as converted for ``Y`` (cached bags are not re-read), in dataset order."""
        if not self._has_source("Y"):
            raise DatasetError(f"{type(self).__name__}: no labels to return (labels_path not given)")
        labels = []
        for name in self.bag_names:
            cached = self.loaded_bags.get(name)
            if cached is not None and "Y" in cached:
                labels.append(cached["Y"].numpy())
            else:
                labels.append(self._convert_label(name, self._load_labels(name)))
        return labels

    def subset(self, indices: Iterable[int]) -> ProcessedMILDataset:
        """A dataset of the bags at ``indices`` (in that order); it shares the cached bags, which are read-only."""
        names = [self.bag_names[int(i)] for i in indices]
        new = copy.copy(self)
        new.bag_names = names
        new.bag_keys = list(self.bag_keys)
        new.loaded_bags = {n: self.loaded_bags[n] for n in names if n in self.loaded_bags}
        return new
