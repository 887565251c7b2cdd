"""Export profiles: TOML files stating how to export and serve (opset, precision, max batch size, Triton
backend, instance groups).

``--profile NAME`` reads ``NAME.toml`` from the packaged profiles folder (``milsdk/export/profiles``, a link
to the repository's top-level ``export/profiles``); ``--profile PATH`` reads any TOML file. Every key is
checked: an unknown key or value is a one-line error naming the file and the key.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from milsdk.errors import ExportError
from milsdk.export.quantize import INT8_WEIGHTS
from milsdk.export.signature import FEATURE_DTYPES, PRECISIONS

__all__ = [
    "DEFAULT_PROFILE",
    "FORMATS",
    "PROFILES_DIR",
    "TRITON_BACKENDS",
    "ExportProfile",
    "InstanceGroup",
    "list_profiles",
    "load_profile",
]

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
DEFAULT_PROFILE = "cpu"
FORMATS = ("onnx", "torchscript")
#: Triton backend -> the artifact format it serves.
TRITON_BACKENDS = {"onnxruntime": "onnx", "python": "onnx", "pytorch": "torchscript"}
_KINDS = ("cpu", "gpu")


@dataclass(frozen=True)
class InstanceGroup:
    """One Triton ``instance_group`` entry: ``count`` instances of ``kind`` ("cpu" / "gpu") on ``gpus``."""

    kind: str = "cpu"
    count: int = 1
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class ExportProfile:
    """A validated export profile (see the TOML files in ``export/profiles``)."""

    name: str
    path: Path | None = None
    description: str = ""
    formats: tuple[str, ...] = FORMATS
    opset: int = 18
    precision: str = "float32"
    #: with precision int8: "uint8" weights (right on every CPU) or "int8" (CPUs with VNNI / AMX only, faster)
    int8_weights: str = "uint8"
    features_dtype: str = "float32"
    max_batch_size: int = 8
    triton_backend: str = "onnxruntime"
    dynamic_batching: bool = False
    instance_groups: tuple[InstanceGroup, ...] = field(default_factory=lambda: (InstanceGroup(),))
    #: limits of the accuracy report of a reduced-precision export (milsdk.export.accuracy)
    max_probability_change: float = 0.02
    min_attention_spearman: float = 0.98
    attention_min_instances: int = 20

    @property
    def uses_gpu(self) -> bool:
        """Whether any instance group runs on a GPU."""
        return any(g.kind == "gpu" for g in self.instance_groups)

    @property
    def triton_format(self) -> str:
        """The artifact format the profile's Triton backend serves."""
        return TRITON_BACKENDS[self.triton_backend]


def list_profiles() -> list[str]:
    """Names of the packaged profiles."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ExportError(
                f"profile {path}: reading TOML on Python 3.10 needs `pip install tomli`"
            ) from None
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ExportError(f"profile {path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ExportError(f"profile {path}: not valid TOML ({exc})") from None


class _Reader:
    """Takes keys out of one TOML table, checking types and values; whatever is left over is unknown."""

    def __init__(self, path: Path, table: dict[str, Any], prefix: str = "") -> None:
        self.path, self.table, self.prefix = path, dict(table), prefix

    def _fail(self, key: str, what: str) -> ExportError:
        return ExportError(f"profile {self.path}: key {self.prefix + key!r} {what}")

    def take(
        self, key: str, kind: type | tuple[type, ...], default: Any, choices: tuple[Any, ...] = ()
    ) -> Any:
        if key not in self.table:
            return default
        value = self.table.pop(key)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise self._fail(key, f"must be {getattr(kind, '__name__', kind)}, got {value!r}")
        if choices and value not in choices:
            raise self._fail(key, f"must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value

    def positive(self, key: str, default: int) -> int:
        value = self.take(key, int, default)
        if value < 1:
            raise self._fail(key, f"must be >= 1, got {value}")
        return value

    def done(self) -> None:
        if self.table:
            key = min(self.table)
            raise self._fail(key, "is unknown")


def _parse(path: Path, data: dict[str, Any], name: str) -> ExportProfile:
    top = _Reader(path, data)
    description = top.take("description", str, "")
    formats = top.take("formats", list, list(FORMATS))
    for fmt in formats:
        if fmt not in FORMATS:
            raise top._fail("formats", f"holds {fmt!r}; formats are {', '.join(FORMATS)}")
    if not formats:
        raise top._fail("formats", "is empty")
    opset = top.take("opset", int, 18)
    if not 13 <= opset <= 24:
        raise top._fail("opset", f"must be between 13 and 24, got {opset}")
    precision = top.take("precision", str, "float32", PRECISIONS)
    features_dtype = top.take("features_dtype", str, "float32", FEATURE_DTYPES)
    int8_weights = top.take("int8_weights", str, "uint8", INT8_WEIGHTS)
    if int8_weights != "uint8" and precision != "int8":
        raise top._fail("int8_weights", f"applies to precision int8, not {precision}")
    max_batch_size = top.positive("max_batch_size", 8)
    triton = _Reader(path, top.take("triton", dict, {}), "triton.")
    accuracy = _Reader(path, top.take("accuracy", dict, {}), "accuracy.")
    top.done()
    limits = {}
    for key, default in (("max_probability_change", 0.02), ("min_attention_spearman", 0.98)):
        value = float(accuracy.take(key, (int, float), default))
        if not 0.0 <= value <= 1.0:
            raise accuracy._fail(key, f"must be between 0 and 1, got {value}")
        limits[key] = value
    limits["attention_min_instances"] = accuracy.take("attention_min_instances", int, 20)
    if limits["attention_min_instances"] < 3:
        raise accuracy._fail("attention_min_instances", f"must be >= 3, got {limits['attention_min_instances']}")
    accuracy.done()
    if precision == "int8" and "torchscript" in formats:
        raise top._fail("formats", "holds 'torchscript'; precision int8 is an ONNX export")
    if precision == "bfloat16" and "onnx" in formats:
        raise top._fail("formats", "holds 'onnx'; precision bfloat16 is a TorchScript export (onnxruntime's CPU "
                        "provider has no bfloat16 MatMul)")
    backend = triton.take("backend", str, "onnxruntime", tuple(TRITON_BACKENDS))
    dynamic_batching = triton.take("dynamic_batching", bool, False)
    groups = []
    for i, entry in enumerate(triton.take("instance_group", list, [{}])):
        if not isinstance(entry, dict):
            raise triton._fail("instance_group", "must be a list of tables ([[triton.instance_group]])")
        group = _Reader(path, entry, f"triton.instance_group[{i}].")
        kind = group.take("kind", str, "cpu", _KINDS)
        count = group.positive("count", 1)
        gpus = group.take("gpus", list, [])
        if any(not isinstance(g, int) or isinstance(g, bool) or g < 0 for g in gpus):
            raise group._fail("gpus", f"must be a list of GPU indices, got {gpus!r}")
        if gpus and kind != "gpu":
            raise group._fail("gpus", 'is only valid with kind = "gpu"')
        group.done()
        groups.append(InstanceGroup(kind, count, tuple(gpus)))
    triton.done()
    if TRITON_BACKENDS[backend] not in formats:
        raise ExportError(
            f"profile {path}: triton.backend {backend!r} serves {TRITON_BACKENDS[backend]}, "
            "which is not in formats"
        )
    return ExportProfile(
        name=name,
        path=path,
        description=description,
        formats=tuple(formats),
        opset=opset,
        precision=precision,
        int8_weights=int8_weights,
        features_dtype=features_dtype,
        max_batch_size=max_batch_size,
        triton_backend=backend,
        dynamic_batching=dynamic_batching,
        instance_groups=tuple(groups),
        **limits,
    )


def load_profile(profile: str | os.PathLike | None = None) -> ExportProfile:
    """Load a profile by packaged name (``cpu``, ``gpu-fp16``, ``triton-python``) or from a TOML file path.

    Args:
        profile: a name, a path (anything ending in ``.toml`` or containing a path separator), or None for the
            default (``cpu``).

    Raises:
        ExportError: unknown name, missing or invalid file, unknown key or value (one line naming file and
            key).
    """
    text = str(profile) if profile is not None else DEFAULT_PROFILE
    looks_like_path = text.endswith(".toml") or os.sep in text or (os.altsep or os.sep) in text
    if looks_like_path:
        path = Path(text)
        if not path.is_file():
            raise ExportError(f"profile {path}: no such file")
        name = path.stem
    else:
        path = PROFILES_DIR / f"{text}.toml"
        if not path.is_file():
            raise ExportError(
                f"unknown profile {text!r}; packaged profiles: {', '.join(list_profiles())} (or a .toml path)"
            )
        name = text
    return _parse(path, _read_toml(path), name)
