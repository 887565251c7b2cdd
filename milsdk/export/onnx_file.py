"""Read an ONNX artifact without torch: its inputs and outputs (dims with symbolic names) and milsdk metadata.

With the ``onnx`` package the graph itself is read; a client-only install (numpy + onnxruntime, no torch and no
``onnx``, ``pip install "milsdk[client]"``) reads the same facts from an onnxruntime session instead, so that
``milsdk inspect model.onnx`` works there too.

Every file is checked with :func:`milsdk.utils.onnx_external_data.check_external_data` before ``onnx`` or
onnxruntime opens it: external data outside the model's folder is refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from milsdk.contract import METADATA_KEY, ModelInfo
from milsdk.errors import ArtifactError, first_line
from milsdk.export.spec import TensorSpec
from milsdk.utils.onnx_external_data import check_external_data

__all__ = ["load_onnx", "onnx_signature", "read_onnx_file", "read_onnx_info"]

# onnxruntime's type strings -> numpy dtype names
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(bool)": "bool",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
}


def _value_spec(value: Any) -> TensorSpec:
    import onnx

    tensor_type = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name if tensor_type.elem_type else "?"
    dims: list[int | str] = []
    for d in tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return TensorSpec(value.name, dtype, tuple(dims))


def onnx_signature(proto: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an ONNX graph (``onnx.ModelProto``) as TensorSpecs (symbolic axes by dim_param,
    "?" if unnamed)."""
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [_value_spec(v) for v in proto.graph.input if v.name not in initializers]
    return inputs, [_value_spec(v) for v in proto.graph.output]


def _info(props: dict[str, str], source: str) -> ModelInfo:
    if METADATA_KEY not in props:
        raise ArtifactError(
            f"{source}: no milsdk metadata (metadata_props has no {METADATA_KEY!r}); not a milsdk export"
        )
    return ModelInfo.from_json(props[METADATA_KEY], source=source)


def read_onnx_info(proto: Any, source: str = "model.onnx") -> ModelInfo:
    """The milsdk metadata stored in ``metadata_props`` of an ``onnx.ModelProto``.

    Raises:
        ArtifactError: the file has no milsdk metadata, or it is invalid.
    """
    return _info({p.key: p.value for p in proto.metadata_props}, source)


# -- reading -----------------------------------------------------------------------------------------------------
def load_onnx(path: str | os.PathLike) -> Any:
    """Read an ONNX file (weights included) with the ``onnx`` package.

    Raises:
        ArtifactError: missing, not an ONNX model, or external data outside its folder
            (:func:`~milsdk.utils.onnx_external_data.check_external_data`).
    """
    import onnx

    path = Path(path)
    check_external_data(path)  # a missing file or a directory is named as such here
    try:
        return onnx.load_model(str(path))
    except Exception as exc:  # noqa: BLE001 - onnx raises anything on a foreign file
        message = first_line(exc, with_type=True)
        raise ArtifactError(f"{path}: not a readable ONNX model ({message})") from None


def _ort_spec(arg: Any) -> TensorSpec:
    dtype = _ORT_DTYPES.get(arg.type, arg.type.removeprefix("tensor(").removesuffix(")"))
    dims = tuple(d if isinstance(d, (int, str)) else "?" for d in arg.shape)
    return TensorSpec(arg.name, dtype, dims)


def read_onnx_file(path: str | os.PathLike) -> tuple[list[TensorSpec], list[TensorSpec], ModelInfo, int | None]:
    """(inputs, outputs, metadata, default-domain opset) of an ONNX artifact, with ``onnx`` when installed, else
    with onnxruntime (then the opset is the one the export recorded in its metadata).

    Raises:
        ArtifactError: missing, unreadable, or not a milsdk export (no metadata).
    """
    path = Path(path)
    try:
        import onnx  # noqa: F401 - only: is it there
    except ModuleNotFoundError:
        return _read_with_onnxruntime(path)
    proto = load_onnx(path)
    info = read_onnx_info(proto, source=str(path))
    inputs, outputs = onnx_signature(proto)
    opset = next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return inputs, outputs, info, opset


def _read_with_onnxruntime(path: Path) -> tuple[list[TensorSpec], list[TensorSpec], ModelInfo, int | None]:
    import onnxruntime as ort

    check_external_data(path)  # a missing file or a directory is named as such here
    options = ort.SessionOptions()
    # only the graph's signature and metadata are read: no optimisation pass, one thread
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types on a foreign file
        message = first_line(exc, with_type=True)
        raise ArtifactError(f"{path}: not a readable ONNX model ({message})") from None
    info = _info(dict(session.get_modelmeta().custom_metadata_map), str(path))
    opset = info.extra.get("export", {}).get("opset")
    return (
        [_ort_spec(a) for a in session.get_inputs()],
        [_ort_spec(a) for a in session.get_outputs()],
        info,
        int(opset) if opset is not None else None,
    )
