"""Checkpoints: one file that rebuilds a model by itself, and never runs code from the file.

File format (a ``torch.save`` of plain data only, read back with ``torch.load(weights_only=True)``)::

    {"format": "milsdk.checkpoint", "format_version": 1,
     "model_name": "ABMIL", "config": {...JSON-like constructor arguments...},
     "state_dict": {...tensors...}, "metadata": {...JSON-like...},
     "milsdk_version": "...", "torch_version": "..."}

``config`` holds only None / bool / int / float / str / lists / dicts. A loss criterion is stored as
``{"__loss__": "CrossEntropyLoss", "kwargs": {...}}`` and rebuilt from ``torch.nn``; the identity feature
extractor as None. Anything else (a custom ``feat_ext`` module) cannot be rebuilt from data alone and is refused
at save time with a clear message.
"""

from __future__ import annotations

import importlib
import inspect
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

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint", "Checkpoint", "FORMAT", "FORMAT_VERSION"]

FORMAT = "milsdk.checkpoint"
FORMAT_VERSION = 1
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


# -- public API -------------------------------------------------------------------------------------------------
def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike, **metadata: Any) -> Path:
    """Write a checkpoint that rebuilds ``model`` by itself.

    The file is written to a temporary name and renamed, so an interrupted save never leaves a half-written file.

    Args:
        model: a registered ``MILModel`` (a lazy one must have run once so that its input size is known).
        path: destination file (``.ckpt`` by convention).
        **metadata: JSON-like extras stored with it (``class_names``, ``threshold``, ``feature_extractor``,
            ``training`` summary, ...).

    Returns:
        The path written.
    """
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
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": type(model).model_name,
        "config": _encode(config, "config"),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": _encode(metadata, "metadata"),
        "milsdk_version": __version__,
        "torch_version": str(torch.__version__),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint file without building the model.

    Raises:
        CheckpointError: missing, corrupt, foreign (not a milsdk checkpoint), newer format, or holding pickled
            objects that are not plain data (refused: loading them could run code).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:
            raise CheckpointError(f"checkpoint {path}: corrupt or not a PyTorch file (unreadable pickle data)") from None
        raise CheckpointError(
            f"checkpoint {path}: refused: it holds pickled Python objects that are not plain data "
            f"(it references {found.group(1)}), and loading them could run code"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path}: corrupt or not a PyTorch file ({first})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        hint = ""
        if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            hint = "; it looks like a bare state_dict: build the model and call model.load_state_dict()"
        raise CheckpointError(f"checkpoint {path}: not a milsdk checkpoint (no format {FORMAT!r}){hint}")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path}: format version {version!r} is newer than this milsdk reads ({FORMAT_VERSION}); "
            "upgrade milsdk"
        )
    for key, kind in (("model_name", str), ("config", dict), ("state_dict", dict)):
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(f"checkpoint {path}: field {key!r} is missing or not a {kind.__name__}")
    return Checkpoint(
        path=path,
        model_name=payload["model_name"],
        config=_decode(payload["config"]),
        state_dict=payload["state_dict"],
        metadata=dict(payload.get("metadata") or {}),
        milsdk_version=str(payload.get("milsdk_version", "")),
        torch_version=str(payload.get("torch_version", "")),
    )


def load_checkpoint(path: str | os.PathLike) -> torch.nn.Module:
    """Rebuild the model stored in a checkpoint (eval mode, on the CPU).

    Args:
        path: a file written by :func:`save_checkpoint`.

    Returns:
        The model, with its weights and ``model.checkpoint_metadata`` (the metadata saved with it).
    """
    return read_checkpoint(path).build_model()
