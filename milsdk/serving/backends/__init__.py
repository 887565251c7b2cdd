"""Backends: run one padded batch of the deployment contract, numpy arrays in, numpy arrays out.

Every backend has the same small surface (:class:`Backend`): ``info`` (the model's :class:`~milsdk.contract.ModelInfo`),
``max_batch_size`` (None = no limit), ``run(inputs) -> outputs`` and ``close()``. A backend raises
:class:`~milsdk.errors.ServerUnavailableError` for failures worth retrying (server down, restarting, model not
ready) and :class:`~milsdk.errors.ServingError` for the rest.

The modules import their runtime (onnxruntime, tritonclient, torch) only when a backend is built, so importing
``milsdk.serving`` needs numpy alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from milsdk.contract import ModelInfo
from milsdk.errors import ArtifactError, first_line

# first_line is milsdk.errors.first_line, re-exported: the onnxruntime backend imports it from here
__all__ = ["Backend", "open_artifact", "first_line"]


class Backend(Protocol):
    """What the client needs from a backend."""

    info: ModelInfo
    max_batch_size: int | None
    #: optional (absent = False): ``run`` also returns ``features_check`` (B,), finite when the bag's features
    #: are (:mod:`milsdk.serving.backends.features_check`), so the client does not scan bags before a run
    checks_features: bool

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one padded batch.

        Args:
            inputs: the contract's inputs named in ``info.inputs``: ``features`` (B, N, D) float32, ``mask`` (B, N)
                bool, and ``coords`` / ``edge_index`` / ``edge_weight`` where the model takes them.

        Returns:
            ``logits`` (B, C) float32 and ``attention`` (B, N) float32; and ``features_check`` (B,) float32
            when ``checks_features``.
        """
        ...

    def close(self) -> None:
        """Release sessions, connections and shared memory."""
        ...


def open_artifact(path: str | Path, **options: Any) -> Backend:
    """The in-process backend for an exported file: ``.onnx`` -> onnxruntime, ``.pt`` -> TorchScript.

    Args:
        path: the artifact written by ``milsdk export``.
        **options: passed to the backend (e.g. ``providers``, ``intra_op_threads`` for onnxruntime).
    """
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{path}: is a directory, not an artifact file (.onnx or .pt)")
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from milsdk.serving.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, **options)
    if suffix in (".pt", ".ts", ".torchscript"):
        from milsdk.serving.backends.torchscript import TorchScriptBackend

        return TorchScriptBackend(path, **options)
    raise ArtifactError(f"{path}: unknown artifact type {suffix!r}, expected .onnx or .pt")
