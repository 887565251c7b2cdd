"""Checkpoints: one file that rebuilds a model by itself, and never runs code from the file.

File format (version 2): one safetensors file. The tensors are the model's ``state_dict``; the header's string
metadata holds the rest, as JSON where it is structured::

    {"format": "milsdk.checkpoint", "format_version": "2", "model_name": "ABMIL",
     "config": "{...JSON constructor arguments...}", "metadata": "{...JSON...}",
     "milsdk_version": "...", "torch_version": "..."}

No pickle at all: reading a checkpoint from a stranger decodes a JSON header and raw tensor bytes, nothing else.
``config`` holds only None / bool / int / float / str / lists / dicts. A loss criterion is stored as
``{"__loss__": "CrossEntropyLoss", "kwargs": {...}}`` and rebuilt from ``torch.nn``; the identity feature
extractor as None. Anything else (a custom ``feat_ext`` module) cannot be rebuilt from data alone and is refused
at save time with a clear message.

Version 1 files (a ``torch.save`` of the same fields as plain data) are still read, with
``torch.load(weights_only=True)``, and only on a torch release whose weights-only unpickler has no known
code-execution hole (see :data:`LEGACY_MIN_TORCH`).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pickle
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from milsdk._version import __version__
from milsdk.errors import CheckpointError

__all__ = [
    "Checkpoint",
    "FORMAT",
    "FORMAT_VERSION",
    "LEGACY_MIN_TORCH",
    "legacy_loader_is_safe",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]

FORMAT = "milsdk.checkpoint"
FORMAT_VERSION = 2
#: The oldest torch whose ``torch.load(weights_only=True)`` may read a version-1 (pickle-based) checkpoint. The
#: weights-only unpickler had a code-execution bypass up to 2.5.1 (CVE-2025-32434, fixed in 2.6.0) and a
#: memory-corruption hole leading to code execution up to 2.9.1 (CVE-2026-24747, fixed in 2.10.0); on an older
#: torch a pickle from a stranger is not safe to open at all, so it is refused.
LEGACY_MIN_TORCH = (2, 10)
#: First bytes of a ``torch.save`` file: a zip archive (torch >= 1.6), or the legacy format's pickled magic number.
#: A safetensors file starts with its header length (8 bytes, little-endian, any values) and then ``{``.
_TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80\x02\x8a\x0a")
_SKIPPED_LOSS_ARGS = {"size_average", "reduce"}


@dataclass
class Checkpoint:
    """The decoded content of a checkpoint file."""

    path: Path
    model_name: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    milsdk_version: str = ""
    torch_version: str = ""

    def build_model(self) -> torch.nn.Module:
        """Rebuild the model through the registry and load its weights (eval mode)."""
        from milsdk.models import get_model_class

        try:
            cls = get_model_class(self.model_name)
        except Exception as exc:
            raise CheckpointError(f"checkpoint {self.path}: {exc}") from exc
        try:
            model = cls(**self.config)
        except Exception as exc:
            raise CheckpointError(
                f"checkpoint {self.path}: cannot rebuild {self.model_name} from its config: {exc}"
            ) from exc
        _load_weights(model, self.state_dict, self.path)
        _check_class_names(self.metadata.get("class_names"), model, self.path)
        model.eval()
        model.checkpoint_metadata = dict(self.metadata)
        return model


# -- config encoding ------------------------------------------------------------------------------------------
#: milsdk's own losses a checkpoint can rebuild (besides torch.nn's): name -> module.
_MILSDK_LOSSES = {"CoxPHLoss": "milsdk.nn.survival", "SmoothTop1SVM": "milsdk.nn.smooth_top1_svm"}


def _loss_class(name: str) -> type | None:
    """The loss class a checkpoint names: torch.nn's, or one of :data:`_MILSDK_LOSSES`."""
    if name in _MILSDK_LOSSES:
        return getattr(importlib.import_module(_MILSDK_LOSSES[name]), name)
    cls = getattr(torch.nn, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, torch.nn.modules.loss._Loss) else None


def _encode_loss(loss: torch.nn.Module) -> dict[str, Any]:
    cls = type(loss)
    if _loss_class(cls.__name__) is not cls:
        raise CheckpointError(
            f"criterion {cls.__name__} is not a torch.nn or milsdk loss, so a checkpoint cannot rebuild it; "
            "use one of those or save model.state_dict() yourself"
        )
    kwargs = {}
    for name in inspect.signature(cls.__init__).parameters:
        if name in ("self", *_SKIPPED_LOSS_ARGS) or not hasattr(loss, name):
            continue
        value = getattr(loss, name)
        kwargs[name] = value.tolist() if isinstance(value, torch.Tensor) else value
    return {"__loss__": cls.__name__, "kwargs": _encode(kwargs, "criterion")}


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_encode(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, torch.nn.Identity):
        return None
    if isinstance(value, torch.nn.modules.loss._Loss) or type(value).__name__ in _MILSDK_LOSSES:
        return _encode_loss(value)
    if isinstance(value, torch.nn.Module):
        raise CheckpointError(
            f"config argument {where!r} is a {type(value).__name__} module, which a checkpoint cannot rebuild "
            "from data alone; save model.state_dict() yourself, or use the identity feature extractor"
        )
    raise CheckpointError(f"config argument {where!r} has type {type(value).__name__}, which is not plain data")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "__loss__" in value:
            cls = _loss_class(str(value["__loss__"]))
            if cls is None:
                raise CheckpointError(f"unknown loss {value['__loss__']!r}")
            kwargs = {
                k: (torch.tensor(v) if isinstance(v, list) else v) for k, v in value.get("kwargs", {}).items()
            }
            return cls(**kwargs)
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((line.strip() for line in first if "size mismatch" in line), first[0] if first else "")
        raise CheckpointError(f"checkpoint {path}: weights do not fit the model: {detail}") from exc
    missing = [k for k in missing if not k.startswith("criterion.")]
    unexpected = [k for k in unexpected if not k.startswith("criterion.")]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path}: weights do not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )


def _check_class_names(class_names: Any, model: torch.nn.Module, path: Path) -> None:
    """Class names stored with a model must be one per class (2 for a binary model), or every label the model
    predicts downstream would carry the wrong name."""
    from milsdk.errors import ModelConfigError
    from milsdk.utils.training_run import check_class_names  # imports this module: here, not at the top

    if not class_names:
        return
    if not isinstance(class_names, list) or not all(isinstance(n, str) for n in class_names):
        raise CheckpointError(
            f"checkpoint {path}: metadata class_names must be a list of names, found {class_names!r}"
        )
    try:
        check_class_names(class_names, int(getattr(model, "n_outputs", 1)))
    except ModelConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: metadata {exc}") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# -- public API -------------------------------------------------------------------------------------------------
def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike, **metadata: Any) -> Path:
    """Write a checkpoint that rebuilds ``model`` by itself (a safetensors file, see the module docstring).

    The file is written to a temporary name and renamed, so an interrupted or failed save (a full disk) never
    leaves a half-written file.

    Args:
        model: a registered ``MILModel`` (a lazy one must have run once so that its input size is known).
        path: destination file (``.ckpt`` by convention).
        **metadata: JSON-like extras stored with it (``class_names``, ``threshold``, ``feature_extractor``,
            ``training`` summary, ...).

    Returns:
        The path written.

    Raises:
        CheckpointError: not a registered model, a config or metadata that is not plain data, or the file cannot
            be written (the message names it and the reason).
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from milsdk.models import MILModel

    path = Path(path)
    if not isinstance(model, MILModel) or not hasattr(type(model), "model_name"):
        raise CheckpointError(f"save_checkpoint: {type(model).__name__} is not a registered milsdk model")
    config = model.config
    if "in_shape" in config and config["in_shape"] is None:
        raise CheckpointError(
            f"save_checkpoint: {type(model).__name__} was built with in_shape=None and has not run yet, so its "
            "input size is unknown; run one batch through it or pass in_shape"
        )
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "model_name": type(model).model_name,
        "config": json.dumps(_encode(config, "config")),
        "metadata": json.dumps(_encode(metadata, "metadata")),
        "milsdk_version": __version__,
        "torch_version": str(torch.__version__),
    }
    # safetensors refuses tensors that share memory (tied weights, views of one buffer): one copy each
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path}: is a directory, not a file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot write it ({_one_line(exc)})") from None
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as exc:  # safetensors reports a full disk as its own error type
        raise CheckpointError(f"checkpoint {path}: cannot write it ({_one_line(exc)})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def legacy_loader_is_safe(torch_version: str) -> bool:
    """Whether ``torch.load(weights_only=True)`` of this torch release may open a pickle from a stranger
    (see :data:`LEGACY_MIN_TORCH`; a pre-release of the fixed version does not count)."""
    from torch.torch_version import TorchVersion

    try:
        return TorchVersion(torch_version) >= LEGACY_MIN_TORCH
    except Exception:  # noqa: BLE001 - an unparsable version string is not known to be safe
        return False


def _read_header(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(9)
    except OSError as exc:  # permissions, a vanished file, an I/O error
        raise CheckpointError(f"checkpoint {path}: cannot read it ({_one_line(exc)})") from None


def _read_safetensors(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type (and OSError) on bad files
        raise CheckpointError(
            f"checkpoint {path}: corrupt or not a checkpoint file ({_one_line(exc)})"
        ) from None
    if header.get("format") != FORMAT:
        hint = "; it looks like bare safetensors weights: build the model and call model.load_state_dict()"
        raise CheckpointError(
            f"checkpoint {path}: not a milsdk checkpoint (no format {FORMAT!r}){hint if tensors else ''}"
        )
    fields: dict[str, Any] = {}
    for key in ("config", "metadata"):
        try:
            fields[key] = json.loads(header.get(key, "{}"))
        except ValueError as exc:
            raise CheckpointError(
                f"checkpoint {path}: field {key!r} is not valid JSON ({_one_line(exc)})"
            ) from None
    return {**header, **fields}, tensors


def _read_legacy(path: Path, torch_version: str) -> dict[str, Any]:
    """A version-1 checkpoint (``torch.save`` of plain data), with the weights-only unpickler of a safe torch."""
    if not legacy_loader_is_safe(torch_version):
        minimum = ".".join(map(str, LEGACY_MIN_TORCH))
        raise CheckpointError(
            f"checkpoint {path}: refused: it is a pickle-based (torch.save) file, and torch {torch_version}'s "
            f"weights-only loader has known code-execution holes (CVE-2025-32434, CVE-2026-24747); read it with "
            f"torch >= {minimum} and save it again (milsdk.save_checkpoint) to get a pickle-free file"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:
            raise CheckpointError(
                f"checkpoint {path}: corrupt or not a checkpoint file (unreadable pickle data)"
            ) from None
        raise CheckpointError(
            f"checkpoint {path}: refused: it holds pickled Python objects that are not plain data "
            f"(it references {found.group(1)}), and loading them could run code"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path}: corrupt or not a checkpoint file ({_one_line(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        hint = ""
        if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            hint = "; it looks like a bare state_dict: build the model and call model.load_state_dict()"
        raise CheckpointError(f"checkpoint {path}: not a milsdk checkpoint (no format {FORMAT!r}){hint}")
    return payload


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint file without building the model.

    Raises:
        CheckpointError: missing, unreadable, corrupt or truncated, foreign (not a milsdk checkpoint), a newer
            format, or a version-1 pickle-based file that holds objects other than plain data or that this torch
            cannot open safely (refused: loading it could run code).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    magic = _read_header(path)
    if magic[8:9] != b"{" and magic.startswith(_TORCH_SAVE_MAGIC):
        payload = _read_legacy(path, str(torch.__version__))
        state_dict = payload.get("state_dict")
    else:
        payload, state_dict = _read_safetensors(path)
    version = payload.get("format_version")
    try:
        version = int(version)
    except (TypeError, ValueError):
        raise CheckpointError(f"checkpoint {path}: format version {version!r} is not a number") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path}: format version {version} is newer than this milsdk reads ({FORMAT_VERSION}); "
            "upgrade milsdk"
        )
    payload["state_dict"] = state_dict
    for key, kind in (("model_name", str), ("config", dict), ("state_dict", dict)):
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(f"checkpoint {path}: field {key!r} is missing or not a {kind.__name__}")
    metadata = payload.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(f"checkpoint {path}: field 'metadata' is not a dict")
    return Checkpoint(
        path=path,
        model_name=payload["model_name"],
        config=_decode(payload["config"]),
        state_dict=state_dict,
        metadata=dict(metadata),
        milsdk_version=str(payload.get("milsdk_version", "")),
        torch_version=str(payload.get("torch_version", "")),
    )


def load_checkpoint(path: str | os.PathLike) -> torch.nn.Module:
    """Rebuild the model stored in a checkpoint (eval mode, on the CPU).

    Args:
        path: a file written by :func:`save_checkpoint` (or a version-1 file, see the module docstring).

    Returns:
        The model, with its weights and ``model.checkpoint_metadata`` (the metadata saved with it).
    """
    return read_checkpoint(path).build_model()
