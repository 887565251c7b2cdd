"""TorchScript export of a MIL model in the deployment signature.

``torch.jit.script`` first: a scripted module keeps shape arithmetic symbolic, so it is right at every B and
N. Only when scripting fails (a model using Python features TorchScript lacks) does the exporter trace, and it
keeps the trace only if it matches eager PyTorch at batch and bag sizes other than the example (tracing
freezes Python arithmetic on shapes; DESIGN.md, "Known pitfalls"). The method used, and why scripting failed,
are stored in the artifact's metadata (``extra["export"]``) and shown by ``milsdk inspect``.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch

from milsdk.contract import METADATA_KEY, ModelInfo
from milsdk.errors import ArtifactError, ExportError, first_line
from milsdk.export.files import atomic_write
from milsdk.export.quiet import quiet_exporter
from milsdk.export.signature import DeploymentModule, example_inputs, model_info, with_export_details

__all__ = ["TRACE_CHECK_SIZES", "export_torchscript", "read_torchscript_info"]

#: (batch, bag size) at which a traced fallback must match eager PyTorch before it is accepted.
TRACE_CHECK_SIZES = ((1, 1), (3, 5), (2, 37), (5, 300))


def _script_error(exc: BaseException) -> str:
    """The line of a TorchScript compile error that says what is wrong, plus where."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    what = lines[0] if lines else type(exc).__name__
    where = next((ln for ln in lines if ln.startswith("File ")), "")
    return f"{what} ({where})" if where else what


def _check_trace(traced: torch.jit.ScriptModule, module: DeploymentModule, features_dtype: str) -> str | None:
    """Compare the traced module with eager ``module`` at :data:`TRACE_CHECK_SIZES`; the first mismatch or
    None."""
    tol = {"float32": 1e-4, "float16": 1e-3}.get(module.precision, 1e-2)
    for i, (batch, n) in enumerate(TRACE_CHECK_SIZES):
        args = example_inputs(module, max(batch, 2), max(n, 2), features_dtype, seed=100 + i)
        args = tuple(a[:batch, :n] for a in args)
        try:
            with torch.no_grad():
                got = traced(*args)
                want = module(*args)
        except Exception as exc:  # noqa: BLE001 - a failing size is a finding, whatever it raises
            return f"at batch={batch}, N={n} it fails: {first_line(exc, with_type=True)}"
        for name, g, w in zip(("logits", "attention"), got, want):
            if g.shape != w.shape:
                return f"at batch={batch}, N={n} {name} has shape {tuple(g.shape)}, eager {tuple(w.shape)}"
            diff = float((g - w).abs().max())
            if not diff <= tol:
                return f"at batch={batch}, N={n} {name} differs from eager by {diff:.3g} (> {tol})"
    return None


def export_torchscript(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    precision: str = "float32",
    features_dtype: str = "float32",
    example_batch: int = 2,
    example_instances: int = 16,
    info: ModelInfo | None = None,
) -> Path:
    """Export ``model`` to TorchScript in the deployment signature and write it atomically.

    The ModelInfo JSON is stored as the extra file :data:`~milsdk.contract.METADATA_KEY`
    (``torch.jit.load(path, _extra_files={METADATA_KEY: ""})`` reads it back).

    Args:
        model: a MILModel with in_shape (D,).
        path: destination ``.pt`` file.
        precision: "float32", "float16" or "bfloat16" (the Linear layers' products) compute; outputs stay
            float32; "int8" is ONNX only.
        features_dtype: dtype of the ``features`` input.
        example_batch, example_instances: example sizes for the trace fallback (>= 2).
        info: metadata to embed (default :func:`~milsdk.export.signature.model_info` of the model).

    Returns:
        The path written.

    Raises:
        ExportError: scripting failed and the traced fallback is wrong or fails at other sizes.
    """
    path = Path(path)
    if precision == "int8":
        raise ExportError("precision int8 is an ONNX export (onnxruntime dynamic quantisation); "
                          "use --format onnx")
    module = DeploymentModule(model, precision)
    base = info if info is not None else model_info(model)
    details: dict[str, object] = {
        "format": "torchscript",
        "precision": precision,
        "features_dtype": features_dtype,
    }
    with quiet_exporter(), torch.no_grad():
        try:
            compiled = torch.jit.script(module)
            details["method"] = "script"
        except Exception as exc:  # noqa: BLE001 - any compile error means: try tracing
            script_error = _script_error(exc)
            args = example_inputs(module, example_batch, example_instances, features_dtype)
            try:
                compiled = torch.jit.trace(module, args, check_trace=False)
            except Exception as trace_exc:
                raise ExportError(
                    f"{base.model_name}: torch.jit.script failed ({script_error}) and so did tracing "
                    f"({first_line(trace_exc, with_type=True)})"
                ) from trace_exc
            mismatch = _check_trace(compiled, module, features_dtype)
            if mismatch is not None:
                raise ExportError(
                    f"{base.model_name}: torch.jit.script failed ({script_error}) and the traced fallback is "
                    f"wrong at other sizes: {mismatch}"
                )
            details.update(
                method="trace",
                script_error=script_error,
                example_sizes=[int(example_batch), int(example_instances)],
                trace_checked_sizes=[list(s) for s in TRACE_CHECK_SIZES],
            )
    info = with_export_details(base, **details)
    with quiet_exporter():
        atomic_write(
            path, lambda tmp: torch.jit.save(compiled, tmp, _extra_files={METADATA_KEY: info.to_json()})
        )
    return path


def read_torchscript_info(path: str | os.PathLike) -> ModelInfo:
    """The milsdk metadata of a TorchScript file, read from its zip archive (the model itself is not loaded).

    Raises:
        ArtifactError: missing, not a TorchScript archive, or without milsdk metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            entry = next((n for n in names if n.split("/", 1)[-1] == f"extra/{METADATA_KEY}"), None)
            if entry is None:
                kind = (
                    "TorchScript archive" if any(n.endswith("/code/__torch__.py") for n in names) else "file"
                )
                raise ArtifactError(
                    f"{path}: no milsdk metadata (extra file {METADATA_KEY!r}) in this {kind}"
                )
            text = archive.read(entry).decode("utf-8")
    except zipfile.BadZipFile:
        raise ArtifactError(f"{path}: not a TorchScript file (not a zip archive)") from None
    return ModelInfo.from_json(text, source=str(path))
