"""Export: the deployment signature, ONNX and TorchScript exporters, verification, Triton repository writer.

Public API (imported on first use, so that ``import milsdk.export`` is cheap)::

    export_checkpoint(ckpt, output_dir, formats, triton_repo=..., profile=...) -> ExportResult
    export_onnx(model, path, opset=18, precision="float32") / export_torchscript(model, path)
    quantize_onnx(float32_onnx, int8_path)  (the int8 export without tracing again)
    verify_export(artifact, model, plan=...) -> VerificationReport
    DeploymentModule(model), model_info(model, metadata)
    write_triton_model(repo, name, artifacts, info, backend=...), read_triton_config, check_triton_model
    load_profile(name_or_path), describe_artifact(path)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "export_checkpoint": "api",
    "ExportResult": "api",
    "ExportedArtifact": "api",
    "export_onnx": "onnx",
    "quantize_onnx": "onnx",
    "DEFAULT_OPSET": "onnx",
    "export_torchscript": "torchscript",
    "verify_export": "verify",
    "VerificationReport": "verify",
    "VerificationPlan": "verify",
    "Tolerances": "verify",
    "DeploymentModule": "signature",
    "model_info": "signature",
    "write_triton_model": "triton",
    "read_triton_config": "triton",
    "check_triton_model": "triton",
    "load_profile": "profiles",
    "list_profiles": "profiles",
    "ExportProfile": "profiles",
    "describe_artifact": "artifact",
    "read_model_info": "artifact",
}

__all__ = [
    "DEFAULT_OPSET",
    "DeploymentModule",
    "ExportProfile",
    "ExportResult",
    "ExportedArtifact",
    "Tolerances",
    "VerificationPlan",
    "VerificationReport",
    "check_triton_model",
    "describe_artifact",
    "export_checkpoint",
    "export_onnx",
    "export_torchscript",
    "list_profiles",
    "load_profile",
    "model_info",
    "quantize_onnx",
    "read_model_info",
    "read_triton_config",
    "verify_export",
    "write_triton_model",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"milsdk.export.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'milsdk.export' has no attribute {name!r}")
