"""Read an exported artifact back: its format, inputs and outputs (dims with symbolic names) and milsdk
metadata.

Used by ``milsdk inspect``, by verification and by the Triton config checker.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from milsdk.contract import ModelInfo
from milsdk.errors import ArtifactError
from milsdk.export.spec import TensorSpec, signature_specs

__all__ = [
    "FORMAT_SUFFIXES",
    "ArtifactDescription",
    "artifact_format",
    "describe_artifact",
    "read_model_info",
]

#: file suffixes of each artifact format (the first is the one the exporter writes).
FORMAT_SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".ts")}


def artifact_format(path: str | os.PathLike) -> str:
    """ "onnx" or "torchscript", from the file suffix.

    Raises:
        ArtifactError: the file does not exist or has another suffix.
    """
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{path}: is a directory, not an artifact file (.onnx or .pt)")
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    for fmt, suffixes in FORMAT_SUFFIXES.items():
        if path.suffix.lower() in suffixes:
            return fmt
    known = ", ".join(s for suffixes in FORMAT_SUFFIXES.values() for s in suffixes)
    raise ArtifactError(f"{path}: unknown artifact type {path.suffix!r} (expected {known})")


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """The milsdk metadata of an .onnx or .pt artifact.

    Raises:
        ArtifactError: missing, unreadable or without milsdk metadata.
    """
    if artifact_format(path) == "onnx":
        from milsdk.export.onnx_file import read_onnx_file

        return read_onnx_file(path)[2]
    from milsdk.export.torchscript import read_torchscript_info

    return read_torchscript_info(path)


@dataclass
class ArtifactDescription:
    """What ``milsdk inspect`` shows.

    Attributes:
        path: the artifact.
        format: "onnx" or "torchscript".
        size_bytes: file size.
        inputs, outputs: tensor specs (symbolic axes by name). ONNX: read from the graph. TorchScript: names
            from the forward schema, dtypes and dims from the contract (TorchScript stores no shapes).
        info: the milsdk metadata.
        opset: ONNX default-domain opset (None for TorchScript).
    """

    path: Path
    format: str
    size_bytes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    info: ModelInfo
    opset: int | None = None

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """{tensor name: {axis: symbolic name}} for every input and output with a dynamic axis."""
        return {s.name: s.dynamic_axes for s in self.inputs + self.outputs if s.dynamic_axes}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "path": str(self.path),
            "format": self.format,
            "size_bytes": self.size_bytes,
            "opset": self.opset,
            "inputs": [asdict(s) for s in self.inputs],
            "outputs": [asdict(s) for s in self.outputs],
            "dynamic_axes": {k: {str(a): n for a, n in v.items()} for k, v in self.dynamic_axes.items()},
            "metadata": asdict(self.info),
        }

    def to_text(self) -> str:
        """A human-readable multi-line summary."""
        info = self.info
        export = info.extra.get("export", {})
        lines = [
            f"{self.path}  ({self.format}, {self.size_bytes / 1e6:.2f} MB"
            + (f", opset {self.opset}" if self.opset else "")
            + (f", {export['method']}" if "method" in export else "")
            + ")",
            f"model: {info.model_name}  D={info.feature_dim}  "
            f"classes={info.n_classes} ({info.output_activation})"
            + (f"  names={info.class_names}" if info.class_names else ""),
            "inputs:",
            *[f"  {s.describe()}" for s in self.inputs],
            "outputs:",
            *[f"  {s.describe()}" for s in self.outputs],
            "dynamic axes: "
            + "; ".join(
                f"{k}: {', '.join(f'{a}={n}' for a, n in v.items())}" for k, v in self.dynamic_axes.items()
            ),
            f"padding invariant: {'yes' if info.padding_invariant else 'no (' + info.padding_note + ')'}",
            f"threshold: {info.threshold}  milsdk: {info.milsdk_version}",
        ]
        if export:
            lines.append("export: " + ", ".join(f"{k}={v}" for k, v in sorted(export.items())))
        return "\n".join(lines)


def _torchscript_input_names(path: Path) -> list[str]:
    import torch

    from milsdk.export.quiet import quiet_exporter

    try:
        with quiet_exporter():
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch.jit.load raises anything on a foreign file
        raise ArtifactError(f"{path}: not a loadable TorchScript module ({type(exc).__name__})") from None
    args = module.forward.schema.arguments
    return [a.name for a in args if a.name != "self"]


def describe_artifact(path: str | os.PathLike) -> ArtifactDescription:
    """Inputs, outputs, dynamic axes and metadata of an .onnx or .pt artifact.

    Raises:
        ArtifactError: missing, unreadable, or not a milsdk export (no metadata).
    """
    path = Path(path)
    fmt = artifact_format(path)
    if fmt == "onnx":  # no torch needed: a client-only install inspects ONNX files too
        from milsdk.export.onnx_file import read_onnx_file

        inputs, outputs, info, opset = read_onnx_file(path)
        return ArtifactDescription(path, fmt, path.stat().st_size, inputs, outputs, info, opset)
    info = read_model_info(path)
    features_dtype = str(info.extra.get("export", {}).get("features_dtype", "float32"))
    inputs, outputs = signature_specs(info, features_dtype)
    names = _torchscript_input_names(path)
    if names != [s.name for s in inputs]:
        raise ArtifactError(f"{path}: forward takes {names}, its metadata says {[s.name for s in inputs]}")
    return ArtifactDescription(path, fmt, path.stat().st_size, inputs, outputs, info)
