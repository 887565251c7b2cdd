"""The bad-input matrix: every entry point given each kind of bad input a user hands it.

One table, :data:`CASES`. Each case names the entry point, the input, the milsdk exception it must raise (or, for
the client, the bag it must fail while the others finish; for the CLI, a non-zero exit code) and a regex for the one
line the user reads, which must name the input and the problem. Every case also checks that nothing was left behind
(no partial or temporary files), and every CLI case that no traceback was printed.

"Unreadable permissions" is made real for root too: root bypasses file modes through CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH, so those cases run in a child process whose capability bounding set lacks both (the kernel then
denies root exactly as it denies any user). "A disk that fills" is RLIMIT_FSIZE for the duration of the call: the
first write past the limit fails with EFBIG, as on a full file system.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import milsdk
from milsdk import errors
from milsdk.cli import main
from milsdk.data import collate_fn, pad_tensors
from milsdk.datasets import ProcessedMILDataset
from milsdk.export import export_onnx, model_info
from milsdk.models import ABMIL, MILModelWrapper, create_model, get_model_class
from milsdk.serving import MILClient
from milsdk.utils.checkpoint import save_checkpoint

D = 8
PYTHON = sys.executable


# -- fixtures: one small real model, its checkpoint and its ONNX export ---------------------------------------------
@pytest.fixture(scope="module")
def model() -> ABMIL:
    torch.manual_seed(0)
    return ABMIL(in_shape=(D,), att_dim=8).eval()


@pytest.fixture(scope="module")
def artifacts(model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("matrix_model")
    info = model_info(model, {"class_names": ["normal", "tumor"]})
    return {
        "ckpt": save_checkpoint(model, root / "abmil.ckpt", class_names=["normal", "tumor"]),
        "onnx": export_onnx(model, root / "onnx" / "model.onnx", info=info),
    }


@dataclass
class Ctx:
    """What a case builds its input in and runs against."""

    tmp: Path
    artifacts: dict[str, Path]
    model: ABMIL


# -- input writers -----------------------------------------------------------------------------------------------
def _bag(n: int = 5, dim: int = D, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def _truncated_npy(path: Path, n: int = 20) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, _bag(n))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _h5_without_features(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["embeddings"] = _bag()
    return path


def _folder(root: Path, bags: dict[str, np.ndarray], labels: dict[str, Any] | None = None,
            coords: dict[str, np.ndarray] | None = None, ext: str = ".npy") -> Path:
    """The ProcessedMILDataset layout: root/features/<bag><ext>, root/labels/<bag><ext>, root/coords/<bag><ext>."""
    for sub, arrays in (("features", bags), ("labels", labels or {}), ("coords", coords or {})):
        for name, array in arrays.items():
            path = root / sub / f"{name}{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            if ext == ".npy":
                np.save(path, np.asarray(array))
            else:
                with h5py.File(path, "w") as f:
                    f[sub] = np.asarray(array)
    return root


def _good_folder(root: Path, n_bags: int = 4, **overrides: Any) -> Path:
    bags = {f"bag{i}": _bag(5 + i, seed=i) for i in range(n_bags)}
    labels = {name: np.array([i % 2]) for i, name in enumerate(bags)}
    for name, array in overrides.items():
        bags[name] = array
        labels.setdefault(name, np.array([0]))
    return _folder(root, bags, labels)


def _dataset(root: Path, **kwargs: Any) -> ProcessedMILDataset:
    return ProcessedMILDataset(features_path=root / "features", labels_path=root / "labels",
                               bag_keys=kwargs.pop("bag_keys", ["X", "Y"]), verbose=False, **kwargs)


# -- child processes for the permission and disk-full cases -------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_PR_CAPBSET_DROP, _CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 24, 1, 2


def _without_file_overrides() -> None:
    """preexec_fn: root's child loses the capabilities that let it read a file whatever its mode."""
    if os.geteuid() == 0:
        for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
            if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _unreadable(path: Path) -> Path:
    os.chmod(path, 0)
    return path


def _child(code: str, tmp: Path, preexec: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python whose TMPDIR is ``tmp/tmpdir`` (so temporary files can be checked)."""
    tmpdir = tmp / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([PYTHON, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=tmp, preexec_fn=preexec, timeout=240)


_RAISES = """
import json, sys
try:
    {call}
except Exception as exc:
    print(json.dumps({{"type": type(exc).__name__, "message": str(exc)}}))
else:
    print(json.dumps({{"type": None, "message": ""}}))
"""


class ChildError(Exception):
    """An exception raised in a child process, re-raised here by the name of its milsdk class."""


@contextlib.contextmanager
def _disk_fills_at(size: int, tmp: Path) -> Iterator[None]:
    """Inside the block, a write that makes any file larger than ``size`` bytes fails with EFBIG, as on a full
    disk (RLIMIT_FSIZE, with SIGXFSZ ignored so the write fails instead of killing the process); temporary files
    go to ``tmp/tmpdir`` so that the test can see what is left there."""
    tmpdir = tmp / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    saved, tempfile.tempdir = tempfile.tempdir, str(tmpdir)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
        tempfile.tempdir = saved


def _raise_from_child(call: str, tmp: Path) -> None:
    done = _child(_RAISES.format(call=call), tmp, preexec=_without_file_overrides)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["type"] is not None:
        raise getattr(errors, result["type"], ChildError)(result["message"])


def _cli_child(args: list[str], tmp: Path, preexec: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """``milsdk ARGS`` in a child process."""
    code = f"import sys\nfrom milsdk.cli import main\nsys.argv = ['milsdk', *{args!r}]\nmain()\n"
    return _child(code, tmp, preexec=preexec)


# -- the outcomes a case can expect --------------------------------------------------------------------------------
@dataclass
class Raised:
    """The call raises ``error`` (a milsdk error) with a one-line message matching ``message``."""

    error: type[Exception]
    message: str


@dataclass
class Finite:
    """A valid but unusual input (an all-masked row, negative coordinates): finite outputs, no error."""


@dataclass
class BagFails:
    """The client returns every bag: bag ``bad`` has ``ok`` False and an error matching ``message``, the others
    equal the model's output on each bag alone."""

    bad: int
    message: str


@dataclass
class CliFails:
    """Exit code != 0, no traceback, and one line of stderr matching ``message``."""

    message: str


@dataclass(frozen=True)
class Case:
    id: str
    entry: str  # the entry point
    bad_input: str  # what is wrong with the input
    run: Callable[[Ctx], Any]
    expect: Raised | Finite | BagFails | CliFails
    outputs: tuple[str, ...] = ()  # files the command is meant to write even on failure (the CSV of predict)


def _invoke(args: list[str]) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args])


# -- the cases -----------------------------------------------------------------------------------------------------
def _ds_truncated(c: Ctx) -> Any:
    root = _good_folder(c.tmp / "data")
    _truncated_npy(root / "features" / "bag1.npy")
    return _dataset(root)[1]


def _ds_h5_without_features(c: Ctx) -> Any:
    root = _folder(c.tmp / "data", {"a": _bag()}, {"a": np.array([1])}, ext=".h5")
    _h5_without_features(root / "features" / "a.h5")
    return _dataset(root, file_ext=".h5")[0]


def _ds_directory_as_bag_file(c: Ctx) -> Any:
    root = _good_folder(c.tmp / "data")
    (root / "labels" / "bag2.npy").unlink()
    (root / "labels" / "bag2.npy").mkdir()
    return _dataset(root)


def _ds_file_as_folder(c: Ctx) -> Any:
    root = _good_folder(c.tmp / "data")
    np.save(c.tmp / "features.npy", _bag())
    return ProcessedMILDataset(features_path=c.tmp / "features.npy", labels_path=root / "labels", verbose=False)


def _ds_missing_folder(c: Ctx) -> Any:
    return ProcessedMILDataset(features_path=c.tmp / "nowhere", verbose=False)


def _ds_with(array: np.ndarray) -> Callable[[Ctx], Any]:
    def run(c: Ctx) -> Any:
        dataset = _dataset(_good_folder(c.tmp / "data", bad=array))
        return dataset[dataset.bag_names.index("bad")]

    return run


def _with_nan() -> np.ndarray:
    x = _bag()
    x[2, 3] = np.nan
    return x


def _with_inf() -> np.ndarray:
    x = _bag()
    x[0, 0] = -np.inf
    return x


def _ds_coords_other_length(c: Ctx) -> Any:
    root = _folder(c.tmp / "data", {"a": _bag(5)}, {"a": np.array([1])}, coords={"a": np.zeros((4, 2), np.int64)})
    return ProcessedMILDataset(features_path=root / "features", labels_path=root / "labels",
                               coords_path=root / "coords", verbose=False)[0]


def _ds_unreadable(c: Ctx) -> Any:
    root = _good_folder(c.tmp / "data")
    _unreadable(root / "features" / "bag0.npy")
    _raise_from_child(f"from milsdk.datasets import ProcessedMILDataset; "
                      f"ProcessedMILDataset(features_path={str(root / 'features')!r}, "
                      f"labels_path={str(root / 'labels')!r}, bag_keys=['X', 'Y'], verbose=False)[0]", c.tmp)


def _ds_labels_outside_classes(c: Ctx) -> Any:
    from milsdk.utils.training_run import check_training_set

    root = _folder(c.tmp / "data", {f"b{i}": _bag(seed=i) for i in range(3)},
                   {f"b{i}": np.array([i]) for i in range(3)})
    return check_training_set(_dataset(root), n_classes=2)


def _collate_dims(c: Ctx) -> Any:
    return collate_fn([{"X": torch.randn(4, D)}, {"X": torch.randn(3, D - 1)}])


def _collate_coords(c: Ctx) -> Any:
    return collate_fn([{"X": torch.randn(4, D), "coords": torch.zeros(4, 2)},
                       {"X": torch.randn(5, D), "coords": torch.zeros(3, 2)}])


def _collate_adj(c: Ctx) -> Any:
    return collate_fn([{"X": torch.randn(4, D), "adj": torch.eye(4)}, {"X": torch.randn(5, D), "adj": torch.eye(3)}])


def _collate_keys(c: Ctx) -> Any:
    return collate_fn([{"X": torch.randn(4, D), "Y": torch.tensor(1)}, {"X": torch.randn(5, D)}])


def _collate_empty(c: Ctx) -> Any:
    return collate_fn([])


def _pad_scalar(c: Ctx) -> Any:
    return pad_tensors([torch.randn(3, D), torch.tensor(2.0)])


def _wrapped(name: str, bag: dict[str, torch.Tensor]) -> Any:
    cls = get_model_class(name)
    model = create_model(name, in_shape=(D,), **cls.test_config).eval()
    with torch.no_grad():
        out = MILModelWrapper(model)(bag)
    return out[0] if isinstance(out, tuple) else out


def _X(b: int = 2, n: int = 5) -> torch.Tensor:
    return torch.from_numpy(np.stack([_bag(n, seed=i) for i in range(b)]))


def _mask(b: int = 2, n: int = 5) -> torch.Tensor:
    return torch.ones(b, n, dtype=torch.bool)


def _X_with(value: float) -> torch.Tensor:
    X = _X()
    X[1, 2, 3] = value
    return X


def _coords(b: int = 2, n: int = 5) -> torch.Tensor:
    return torch.stack(torch.meshgrid(torch.arange(b), torch.arange(n), indexing="ij"), -1).float()


def _model_all_masked(c: Ctx) -> Any:
    mask = _mask()
    mask[1] = False
    return _wrapped("ABMIL", {"X": _X(), "mask": mask})


def _ckpt_truncated(c: Ctx) -> Any:
    raw = c.artifacts["ckpt"].read_bytes()
    (c.tmp / "cut.ckpt").write_bytes(raw[: len(raw) * 2 // 3])
    return milsdk.load_checkpoint(c.tmp / "cut.ckpt")


def _ckpt_directory(c: Ctx) -> Any:
    (c.tmp / "model.ckpt").mkdir()
    return milsdk.load_checkpoint(c.tmp / "model.ckpt")


def _ckpt_unreadable(c: Ctx) -> Any:
    path = c.tmp / "model.ckpt"
    path.write_bytes(c.artifacts["ckpt"].read_bytes())
    _unreadable(path)
    _raise_from_child(f"import milsdk; milsdk.load_checkpoint({str(path)!r})", c.tmp)


def _ckpt_class_names(c: Ctx) -> Any:
    path = save_checkpoint(c.model, c.tmp / "model.ckpt", class_names=["a", "b", "c"])
    return milsdk.load_checkpoint(path)


def _ckpt_disk_full(c: Ctx) -> Any:
    """A checkpoint of ~3 KB written under a 1 KB file-size limit (what the Trainer does at every best epoch)."""
    with _disk_fills_at(1024, c.tmp):
        save_checkpoint(c.model, c.tmp / "best.ckpt")


def _client(bags: list[Any]) -> Callable[[Ctx], Any]:
    def run(c: Ctx) -> Any:
        with MILClient.from_path(c.artifacts["onnx"]) as client:
            return client.predict(bags), [client.predict([b])[0] for b in bags]

    return run


def _client_external_data(c: Ctx) -> Any:
    import onnx

    folder = c.tmp / "model"
    folder.mkdir()
    proto = onnx.load_model(c.artifacts["onnx"])
    onnx.save_model(proto, folder / "model.onnx", save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    os.replace(folder / "weights.bin", c.tmp / "weights.bin")
    os.symlink(c.tmp / "weights.bin", folder / "weights.bin")  # an innocent name that leads out of the folder
    return MILClient.from_path(folder / "model.onnx")


def _predict(make: Callable[[Path], Path]) -> Callable[[Ctx], Any]:
    def run(c: Ctx) -> Any:
        bad = make(c.tmp / "in")
        return _invoke(["predict", c.artifacts["onnx"], bad, "--out", c.tmp / "preds.csv", "--no-progress", "-q"])

    return run


def _predict_unreadable(c: Ctx) -> Any:
    path = c.tmp / "in" / "slide.npy"
    path.parent.mkdir()
    np.save(path, _bag())
    _unreadable(path)
    return _cli_child(["predict", str(c.artifacts["onnx"]), str(path), "--out", str(c.tmp / "preds.csv"),
                       "--no-progress", "-q"], c.tmp, preexec=_without_file_overrides)


def _train(make: Callable[[Path], Path], *extra: str) -> Callable[[Ctx], Any]:
    def run(c: Ctx) -> Any:
        data = make(c.tmp / "data")
        return _invoke(["train", data, "--out", c.tmp / "m.ckpt", "--epochs", "1", *extra])

    return run


def _train_truncated(root: Path) -> Path:
    _good_folder(root)
    _truncated_npy(root / "features" / "bag3.npy")
    return root


def _train_h5(root: Path) -> Path:
    _folder(root, {f"b{i}": _bag(seed=i) for i in range(3)}, {f"b{i}": np.array([i % 2]) for i in range(3)},
            ext=".h5")
    _h5_without_features(root / "features" / "b1.h5")
    return root


def _train_labels(root: Path) -> Path:
    return _folder(root, {f"b{i}": _bag(seed=i) for i in range(6)}, {f"b{i}": np.array([i % 3]) for i in range(6)})


def _train_file_as_dir(root: Path) -> Path:
    root.parent.mkdir(parents=True, exist_ok=True)
    np.save(root.with_suffix(".npy"), _bag())
    return root.with_suffix(".npy")


def _export(make: Callable[[Ctx], Path]) -> Callable[[Ctx], Any]:
    def run(c: Ctx) -> Any:
        return _invoke(["export", make(c), "-o", c.tmp / "out", "--format", "onnx"])

    return run


def _truncated_ckpt(c: Ctx) -> Path:
    raw = c.artifacts["ckpt"].read_bytes()
    (c.tmp / "cut.ckpt").write_bytes(raw[:100])
    return c.tmp / "cut.ckpt"


def _export_disk_full(c: Ctx) -> Any:
    """The ONNX file is ~5 KB: with a 4 KB file-size limit its write fails with EFBIG mid-export."""
    with _disk_fills_at(4096, c.tmp):
        return _invoke(["export", c.artifacts["ckpt"], "-o", c.tmp / "out", "--format", "onnx", "--triton",
                        c.tmp / "repo"])


def _inspect(make: Callable[[Ctx], Path]) -> Callable[[Ctx], Any]:
    return lambda c: _invoke(["inspect", make(c)])


def _truncated_onnx(c: Ctx) -> Path:
    raw = c.artifacts["onnx"].read_bytes()
    (c.tmp / "model.onnx").write_bytes(raw[: len(raw) // 2])
    return c.tmp / "model.onnx"


def _onnx_outside(c: Ctx) -> Path:
    import onnx

    folder = c.tmp / "model"
    folder.mkdir()
    onnx.save_model(onnx.load_model(c.artifacts["onnx"]), folder / "model.onnx", save_as_external_data=True,
                    location="weights.bin", size_threshold=0)
    proto = onnx.load_model(folder / "model.onnx", load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../weights.bin"
    onnx.save_model(proto, folder / "model.onnx")
    return folder / "model.onnx"


def _mkdir(name: str) -> Callable[[Path | Ctx], Path]:
    def make(where: Path | Ctx) -> Path:
        path = (where.tmp if isinstance(where, Ctx) else where) / name
        path.mkdir(parents=True)
        return path

    return make


def _nowhere(name: str) -> Callable[[Path | Ctx], Path]:
    return lambda where: (where.tmp if isinstance(where, Ctx) else where) / name


_P = r"[^\n]*"  # the rest of a line (a path)

CASES = [
    # datasets (ProcessedMILDataset, the folder layout `milsdk train` reads)
    Case("dataset-truncated-npy", "ProcessedMILDataset[i]", "truncated .npy", _ds_truncated,
         Raised(errors.DatasetError, rf"features/bag1\.npy: cannot read \.npy file \({_P}\)$")),
    Case("dataset-h5-without-features", "ProcessedMILDataset[i]", ".h5 without a 'features' dataset",
         _ds_h5_without_features,
         Raised(errors.DatasetError, r"a\.h5: no dataset 'features' \(also tried 'feats'\); datasets in file: "
                                     r"\['embeddings'\]")),
    Case("dataset-directory-as-file", "ProcessedMILDataset()", "a directory where a bag's label file must be",
         _ds_directory_as_bag_file,
         Raised(errors.DatasetError, r"bag 'bag2': label file .*labels/bag2\.npy is a directory, not a file")),
    Case("dataset-file-as-folder", "ProcessedMILDataset()", "a file given as the features folder",
         _ds_file_as_folder, Raised(errors.DatasetError, r"features_path .*features\.npy: is a file, not a folder")),
    Case("dataset-nonexistent", "ProcessedMILDataset()", "nonexistent features folder", _ds_missing_folder,
         Raised(errors.DatasetNotFoundError, r"features_path .*nowhere: folder not found")),
    Case("dataset-nan", "ProcessedMILDataset[i]", "NaN in features", _ds_with(_with_nan()),
         Raised(errors.DatasetError, r"features/bad\.npy: features contain NaN or inf \(1 value")),
    Case("dataset-inf", "ProcessedMILDataset[i]", "-inf in features", _ds_with(_with_inf()),
         Raised(errors.DatasetError, r"features/bad\.npy: features contain NaN or inf")),
    Case("dataset-empty-bag", "ProcessedMILDataset[i]", "a bag of 0 instances", _ds_with(np.zeros((0, D), np.float32)),
         Raised(errors.DatasetError, r"features/bad\.npy: bag has 0 instances \(shape \(0, 8\)\)")),
    Case("dataset-wrong-dtype", "ProcessedMILDataset[i]", "features of strings", _ds_with(np.array([["a", "b"]])),
         Raised(errors.DatasetError, r"features/bad\.npy: features must be numeric, found <U1")),
    Case("dataset-coords-other-length", "ProcessedMILDataset[i]", "coords of 4 rows for 5 instances",
         _ds_coords_other_length,
         Raised(errors.DatasetError, r"coords/a\.npy: coords have N=4 rows, features .*a\.npy have N=5")),
    Case("dataset-unreadable", "ProcessedMILDataset[i]", "a features file without read permission", _ds_unreadable,
         Raised(errors.DatasetError, r"features/bag0\.npy: cannot read \.npy file \(\[Errno 13\] Permission denied")),
    Case("dataset-labels-outside-classes", "check_training_set", "label 2 for a 2-class model",
         _ds_labels_outside_classes,
         Raised(errors.DatasetError, r"training set: bag 'b2' has label 2, outside the model's classes: n_classes=2")),
    # collate (milsdk.data)
    Case("collate-wrong-feature-dim", "collate_fn", "bags of D=8 and D=7", _collate_dims,
         Raised(errors.BagError, r"collate_fn: bag 1 key 'X' has shape \(3, 7\), bag 0 has \(n, 8\)")),
    Case("collate-coords-other-length", "collate_fn", "coords of 3 rows in a bag of 5", _collate_coords,
         Raised(errors.BagError, r"collate_fn: bag 1 key 'coords' has 3 instances, its 'X' has 5")),
    Case("collate-adj-wrong-size", "collate_fn", "adj (3, 3) in a bag of 5", _collate_adj,
         Raised(errors.BagError, r"collate_fn: bag 1 key 'adj' has shape \(3, 3\), expected \(5, 5\) for its 5 "
                                 r"instances")),
    Case("collate-mismatched-keys", "collate_fn", "a bag without Y", _collate_keys,
         Raised(errors.BagError, r"collate_fn: bag 1 has keys \['X'\], bag 0 has \['X', 'Y'\]")),
    Case("collate-empty-batch", "collate_fn", "an empty list", _collate_empty,
         Raised(errors.BagError, r"collate_fn: got an empty batch")),
    Case("pad-scalar", "pad_tensors", "a 0-dim tensor among bags", _pad_scalar,
         Raised(errors.BagError, r"pad_tensors: tensor 1 has shape \(\), expected \(n, 8\)")),
    # models (MILModelWrapper is the boundary the Trainer and the CLI call)
    Case("model-wrong-feature-dim", "MILModelWrapper(ABMIL)", "X of D=7 for in_shape (8,)",
         lambda c: _wrapped("ABMIL", {"X": torch.randn(2, 5, D - 1)}),
         Raised(errors.BagError, r"bag key 'X' has instance shape \(7,\), model ABMIL expects in_shape \(8,\)")),
    Case("model-wrong-dtype", "MILModelWrapper(ABMIL)", "X of int64",
         lambda c: _wrapped("ABMIL", {"X": torch.ones(2, 5, D, dtype=torch.int64)}),
         Raised(errors.BagError, r"bag key 'X' has dtype torch\.int64, model ABMIL expects floating-point")),
    Case("model-nan", "MILModelWrapper(ABMIL)", "NaN in X", lambda c: _wrapped("ABMIL", {"X": _X_with(np.nan)}),
         Raised(errors.BagError, r"bag key 'X' holds 1 NaN/inf value")),
    Case("model-inf", "MILModelWrapper(ABMIL)", "inf in X", lambda c: _wrapped("ABMIL", {"X": _X_with(np.inf)}),
         Raised(errors.BagError, r"bag key 'X' holds 1 NaN/inf value")),
    Case("model-empty-bag", "MILModelWrapper(ABMIL)", "X with N=0",
         lambda c: _wrapped("ABMIL", {"X": torch.randn(2, 0, D)}),
         Raised(errors.BagError, r"bag key 'X' has 0 instances")),
    Case("model-all-masked-row", "MILModelWrapper(ABMIL)", "a batch row with no valid instance",
         _model_all_masked, Finite()),
    Case("model-mask-other-length", "MILModelWrapper(ABMIL)", "mask (2, 4) for X (2, 5, 8)",
         lambda c: _wrapped("ABMIL", {"X": _X(), "mask": _mask(2, 4)}),
         Raised(errors.BagError, r"bag key 'mask' has shape \(2, 4\), expected \(2, 5\) \(batch, instances of 'X'\)")),
    Case("model-coords-other-length", "MILModelWrapper(SETMIL)", "coords of 4 rows for 5 instances",
         lambda c: _wrapped("SETMIL", {"X": _X(), "mask": _mask(), "coords": _coords(2, 4)}),
         Raised(errors.BagError, r"bag key 'coords' has shape \(2, 4, 2\), expected \(2, 5, d\)")),
    Case("model-negative-coords", "MILModelWrapper(SETMIL)", "negative coords",
         lambda c: _wrapped("SETMIL", {"X": _X(), "mask": _mask(), "coords": _coords() - 1000}), Finite()),
    Case("model-huge-coords", "MILModelWrapper(SETMIL)", "coords of 1e9",
         lambda c: _wrapped("SETMIL", {"X": _X(), "mask": _mask(), "coords": _coords() * 1e9}), Finite()),
    Case("model-adj-wrong-size", "MILModelWrapper(PatchGCN)", "adj (2, 4, 4) for 5 instances",
         lambda c: _wrapped("PatchGCN", {"X": _X(), "mask": _mask(), "adj": torch.eye(4).expand(2, 4, 4)}),
         Raised(errors.BagError, r"bag key 'adj' has shape \(2, 4, 4\), expected \(2, 5, 5\)")),
    # checkpoints (milsdk.load_checkpoint)
    Case("checkpoint-truncated", "load_checkpoint", "a checkpoint cut at 2/3", _ckpt_truncated,
         Raised(errors.CheckpointError, r"checkpoint .*cut\.ckpt: corrupt or not a checkpoint file \(")),
    Case("checkpoint-directory", "load_checkpoint", "a directory", _ckpt_directory,
         Raised(errors.CheckpointError, r"checkpoint .*model\.ckpt: is a directory, not a checkpoint file")),
    Case("checkpoint-nonexistent", "load_checkpoint", "a path that does not exist",
         lambda c: milsdk.load_checkpoint(c.tmp / "missing.ckpt"),
         Raised(errors.CheckpointError, r"checkpoint .*missing\.ckpt: no such file")),
    Case("checkpoint-unreadable", "load_checkpoint", "a checkpoint without read permission", _ckpt_unreadable,
         Raised(errors.CheckpointError, r"checkpoint .*model\.ckpt: cannot read it \(\[Errno 13\] Permission denied")),
    Case("checkpoint-class-names", "load_checkpoint", "3 class names for a binary model", _ckpt_class_names,
         Raised(errors.CheckpointError, r"model\.ckpt: metadata class_names has 3 names \(a, b, c\); a binary model "
                                        r"needs 2")),
    Case("checkpoint-save-disk-full", "save_checkpoint", "a disk that fills while saving (RLIMIT_FSIZE 1 KB)",
         _ckpt_disk_full,
         Raised(errors.CheckpointError, r"checkpoint .*best\.ckpt: cannot write it \(.*File too large")),
    # the client (MILClient.from_path): the bad bag fails alone
    Case("client-wrong-dim", "MILClient.predict", "a bag of D=7 among good bags",
         _client([_bag(6), _bag(4, D - 1), _bag(9, seed=2)]),
         BagFails(1, r"features have dimension 7, model ABMIL expects 8")),
    Case("client-nan", "MILClient.predict", "a bag with NaN", _client([_with_nan(), _bag(3, seed=1)]),
         BagFails(0, r"features hold 1 NaN/inf values")),
    Case("client-empty", "MILClient.predict", "a bag of 0 instances",
         _client([_bag(3), _bag(7, seed=1), np.zeros((0, D), np.float32)]), BagFails(2, r"bag has 0 instances")),
    Case("client-wrong-dtype", "MILClient.predict", "int64 features",
         _client([np.ones((4, D), np.int64), _bag(5)]),
         BagFails(0, r"features have dtype int64, expected a floating-point dtype")),
    Case("client-external-data-outside", "MILClient.from_path", "ONNX external data through a symlink out of its folder",
         _client_external_data,
         Raised(errors.ArtifactError, r"model\.onnx: refused: tensor '[^']+' keeps its data in 'weights\.bin', which "
                                      r"passes through the symlink")),
    # the command line
    Case("predict-truncated-npy", "milsdk predict", "truncated .npy",
         _predict(lambda d: _truncated_npy(d / "slide.npy")),
         CliFails(r"^.*slide\.npy: cannot read \.npy file \(.+\)$"), outputs=("preds.csv",)),
    Case("predict-h5-without-features", "milsdk predict", ".h5 without a 'features' dataset",
         _predict(lambda d: _h5_without_features(d / "slide.h5")),
         CliFails(r"^.*slide\.h5: no dataset 'features' or 'feats'; datasets: \['embeddings'\]$"),
         outputs=("preds.csv",)),
    Case("predict-directory-as-file", "milsdk predict", "a directory named like a bag file",
         _predict(_mkdir("slide.npy")),
         CliFails(r"^.*slide\.npy: folder holds no \.h5/\.hdf5/\.npy files$"), outputs=("preds.csv",)),
    Case("predict-nonexistent", "milsdk predict", "an input that does not exist", _predict(_nowhere("gone.h5")),
         CliFails(r"^.*gone\.h5: no such file or folder$"), outputs=("preds.csv",)),
    Case("predict-unreadable", "milsdk predict", "a bag file without read permission", _predict_unreadable,
         CliFails(r"^.*slide\.npy: cannot read \.npy file \(\[Errno 13\] Permission denied.*\)$"),
         outputs=("preds.csv",)),
    Case("predict-model-directory", "milsdk predict", "a directory as the model",
         lambda c: _invoke(["predict", _mkdir("model.onnx")(c), "x.npy"]),
         CliFails(r"^Error: .*model\.onnx: is a directory, not an artifact file \(\.onnx or \.pt\)$")),
    Case("predict-model-nonexistent", "milsdk predict", "a model path that does not exist",
         lambda c: _invoke(["predict", c.tmp / "nothing.onnx", "x.npy"]),
         CliFails(r"^Error: .*nothing\.onnx: no such file$")),
    Case("train-truncated-npy", "milsdk train", "truncated .npy in the features folder", _train(_train_truncated),
         CliFails(r"^Error: .*features/bag3\.npy: cannot read \.npy file \(.+\)$")),
    Case("train-h5-without-features", "milsdk train", ".h5 without a 'features' dataset",
         _train(_train_h5, "--ext", ".h5"),
         CliFails(r"^Error: .*features/b1\.h5: no dataset 'features' \(also tried 'feats'\); datasets in file: "
                  r"\['embeddings'\]$")),
    Case("train-nonexistent", "milsdk train", "a data folder that does not exist", _train(lambda root: root),
         CliFails(r"^Error: features_path .*data/features: folder not found$")),
    Case("train-file-as-folder", "milsdk train", "a file given as DATA_DIR", _train(_train_file_as_dir),
         CliFails(r"^Error: Invalid value for '\[DATA_DIR\]': Directory '.*data\.npy' is a file\.$")),
    Case("train-labels-outside-classes", "milsdk train", "labels 0..2 with --set n_classes=2",
         _train(_train_labels, "--set", "n_classes=2"),
         CliFails(r"^Error: training set: bag 'b2' has label 2, outside the model's classes: n_classes=2")),
    Case("train-out-is-directory", "milsdk train", "--out is a directory",
         lambda c: _invoke(["train", _good_folder(c.tmp / "data"), "--out", _mkdir("m.ckpt")(c)]),
         CliFails(r"^Error: Invalid value for '--out': File '.*m\.ckpt' is a directory\.$")),
    Case("export-truncated-checkpoint", "milsdk export", "a checkpoint cut at 100 bytes", _export(_truncated_ckpt),
         CliFails(r"^Error: checkpoint .*cut\.ckpt: corrupt or not a checkpoint file \(.+\)$")),
    Case("export-directory-as-checkpoint", "milsdk export", "a directory as the checkpoint",
         _export(_mkdir("model.ckpt")),
         CliFails(r"^Error: checkpoint .*model\.ckpt: is a directory, not a checkpoint file$")),
    Case("export-nonexistent", "milsdk export", "a checkpoint that does not exist", _export(_nowhere("gone.ckpt")),
         CliFails(r"^Error: checkpoint .*gone\.ckpt: no such file$")),
    Case("export-disk-full", "milsdk export", "a disk that fills during export (RLIMIT_FSIZE 4 KB: EFBIG)",
         _export_disk_full,
         CliFails(r"^Error: .*/model\.onnx: cannot write it \(\[Errno 27\] File too large\); is the disk full\?$")),
    Case("inspect-truncated-onnx", "milsdk inspect", "an ONNX file cut in half", _inspect(_truncated_onnx),
         CliFails(r"^Error: .*model\.onnx: not a readable ONNX model \(.+\)$")),
    Case("inspect-directory", "milsdk inspect", "a directory", _inspect(_mkdir("model.onnx")),
         CliFails(r"^Error: .*model\.onnx: is a directory, not an artifact file \(\.onnx or \.pt\)$")),
    Case("inspect-nonexistent", "milsdk inspect", "a path that does not exist", _inspect(_nowhere("gone.onnx")),
         CliFails(r"^Error: .*gone\.onnx: no such file$")),
    Case("inspect-external-data-outside", "milsdk inspect", "ONNX external data at ../../weights.bin",
         _inspect(_onnx_outside),
         CliFails(r"^Error: .*model\.onnx: refused: tensor '[^']+' keeps its data in '\.\./\.\./weights\.bin', which "
                  r"points outside the model's folder .*$")),
]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


def _one_line_match(pattern: str, text: str) -> str:
    """The one line of ``text`` that matches ``pattern`` (which may be anchored with ^ and $)."""
    lines = [line for line in text.splitlines() if re.search(pattern, line)]
    assert lines, f"no line matches {pattern!r} in:\n{text}"
    return lines[0]


def _result_text(result: Any) -> tuple[int, str, Any]:
    """(exit code, stderr, exception) of a CliRunner result or a child process."""
    if isinstance(result, subprocess.CompletedProcess):
        return result.returncode, result.stderr, None
    return result.exit_code, result.stderr, result.exception


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, artifacts, model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ctx = Ctx(tmp_path, artifacts, model)
    expect = case.expect
    # every file the case writes as input is made by run(); what is there afterwards is inputs + declared outputs
    if isinstance(expect, Raised):
        with pytest.raises(expect.error) as caught:
            case.run(ctx)
        message = str(caught.value)
        assert isinstance(caught.value, errors.MILSDKError), f"{type(caught.value).__name__}: {message}"
        assert "\n" not in message, message
        assert re.search(expect.message, message), f"{message!r} does not match {expect.message!r}"
    elif isinstance(expect, Finite):
        out = case.run(ctx)
        assert torch.isfinite(out).all(), out
    elif isinstance(expect, BagFails):
        together, alone = case.run(ctx)
        assert [p.index for p in together] == list(range(len(together)))
        bad = together[expect.bad]
        assert not bad.ok and bad.logits is None and "\n" not in bad.error
        assert re.search(expect.message, bad.error), bad.error
        for i, pred in enumerate(together):
            if i != expect.bad:
                assert pred.ok, pred.error
                np.testing.assert_allclose(pred.probabilities, alone[i].probabilities, atol=1e-6)
                np.testing.assert_allclose(pred.attention, alone[i].attention, atol=1e-6)
    else:
        code, stderr, exception = _result_text(case.run(ctx))
        assert code not in (0, None), stderr
        assert exception is None or isinstance(exception, SystemExit), repr(exception)
        assert "Traceback" not in stderr, stderr
        _one_line_match(expect.message, stderr)
    # milsdk's temporary names (".<name>.<random>.tmp", ".<name>.<random>.partial", "milsdk-export-*", Python's
    # "tmp*" in TMPDIR) and the targets of a failed train / export must all be gone
    leftovers = {f for f in _files(tmp_path)
                 if re.search(r"(^|/)(\.[^/]*\.(tmp|partial)(/|$)|milsdk-|tmpdir/tmp)|^(out|repo)/|^(m|best)\.ckpt$", f)}
    assert not leftovers, f"partial or temporary files left behind: {sorted(leftovers)}"
    for name in case.outputs:  # what a failed predict still writes on purpose: the CSV row with the error
        assert (tmp_path / name).is_file()


def test_the_matrix_covers_every_entry_point():
    entries = {c.entry.split("(")[0].split("[")[0].split(".")[0] for c in CASES}
    assert {"ProcessedMILDataset", "collate_fn", "MILModelWrapper", "load_checkpoint", "MILClient", "milsdk predict",
            "milsdk train", "milsdk export", "milsdk inspect"} <= entries
    assert len(CASES) >= 30
