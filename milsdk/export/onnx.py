"""ONNX export of a MIL model in the deployment signature (torch.onnx dynamo exporter, dynamic B and N).

Default opset: 18. It is the lowest opset that keeps the exported graph in its natural form (ReduceMax /
ReduceSum with axes as inputs, LayerNormalization since 17). The file gets the lowest IR version its opsets
need (IR 8 for opset 18), not the IR version of the installed onnx package (10 for onnx >= 1.16, which
onnxruntime < 1.18, and the Triton releases that ship it, refuse: "Unsupported model IR version: 10"). So
onnxruntime >= 1.15 runs a default export: the tests load one in onnxruntime 1.15.0 (:data:`OLDEST_ONNXRUNTIME`,
the oldest release with Python 3.11 wheels) and compare its outputs with the current runtime's. onnxruntime
1.14 (Triton 23.04) also implements IR 8 / opset 18 but is not checked. Raise the opset (``--opset``) only when
a newer runtime needs it.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import torch

from milsdk.contract import ATTENTION, LOGITS, METADATA_KEY, ModelInfo
from milsdk.errors import ExportError, ModelConfigError, first_line
from milsdk.export.files import atomic_write
from milsdk.export.onnx_file import load_onnx, onnx_signature, read_onnx_info
from milsdk.export.quantize import INT8_WEIGHTS, quantize_int8
from milsdk.export.quiet import quiet_exporter
from milsdk.export.signature import (
    DeploymentModule,
    dynamic_shapes,
    example_inputs,
    model_info,
    with_export_details,
)
from milsdk.export.spec import TensorSpec, signature_specs

__all__ = [
    "DEFAULT_OPSET",
    "OLDEST_ONNXRUNTIME",
    "check_onnx_signature",
    "export_onnx",
    "load_onnx",
    "lowest_ir_version",
    "onnx_signature",
    "quantize_onnx",
    "read_onnx_info",
]

DEFAULT_OPSET = 18
#: the oldest onnxruntime the tests run a default export with (the oldest with Python 3.11 wheels on PyPI).
OLDEST_ONNXRUNTIME = "1.15.0"


def check_onnx_signature(
    proto: onnx.ModelProto, expected: tuple[list[TensorSpec], list[TensorSpec]], source: str = "model.onnx"
) -> None:
    """Check the graph's inputs and outputs against the contract: names and order, dtypes, fixed sizes, and
    that every dynamic axis (batch, bag) is symbolic.

    Raises:
        ExportError: naming the tensor and axis that differs (e.g. a bag axis frozen to the example size).
    """
    found_in, found_out = onnx_signature(proto)
    for kind, found, wanted in (("input", found_in, expected[0]), ("output", found_out, expected[1])):
        if [s.name for s in found] != [s.name for s in wanted]:
            raise ExportError(
                f"{source}: ONNX {kind}s are {[s.name for s in found]}, "
                f"the contract needs {[s.name for s in wanted]}"
            )
        for got, want in zip(found, wanted):
            if got.dtype != want.dtype:
                raise ExportError(
                    f"{source}: ONNX {kind} {got.name!r} is {got.dtype}, the contract needs {want.dtype}"
                )
            if len(got.shape) != len(want.shape):
                raise ExportError(
                    f"{source}: ONNX {kind} {got.name!r} has rank {len(got.shape)}, "
                    f"the contract needs {len(want.shape)}"
                )
            for axis, (g, w) in enumerate(zip(got.shape, want.shape)):
                if isinstance(w, str) and not isinstance(g, str):
                    raise ExportError(
                        f"{source}: ONNX {kind} {got.name!r} axis {axis} ({w}) was exported with the fixed "
                        f"size {g}, so the artifact would only accept that size; it must be symbolic"
                    )
                if isinstance(w, int) and g != w:
                    raise ExportError(
                        f"{source}: ONNX {kind} {got.name!r} axis {axis} is {g}, the contract needs {w}"
                    )


def _name_dims(proto: onnx.ModelProto, expected: tuple[list[TensorSpec], list[TensorSpec]]) -> None:
    """Give the symbolic axes of the graph's inputs and outputs the contract's names (batch, n_instances)."""
    rename: dict[str, str] = {}
    values = list(proto.graph.input) + list(proto.graph.output)
    specs = expected[0] + expected[1]
    for value, spec in zip(values, specs):
        for d, w in zip(value.type.tensor_type.shape.dim, spec.shape):
            if isinstance(w, str) and d.dim_param and d.dim_param != w:
                rename.setdefault(d.dim_param, w)
    if not rename:
        return
    for value in list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info):
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param in rename:
                d.dim_param = rename[d.dim_param]


def lowest_ir_version(proto: onnx.ModelProto) -> int:
    """The lowest ONNX IR version that holds ``proto``: what its opsets need (IR 8 for opset 18), and at least
    8 when it has model-local functions (introduced in IR 8)."""
    needed = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    return max(int(needed), 8 if len(proto.functions) else 3)


# -- export --------------------------------------------------------------------------------------------------
def export_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    precision: str = "float32",
    features_dtype: str = "float32",
    example_batch: int = 2,
    example_instances: int = 16,
    info: ModelInfo | None = None,
    int8_weights: str = "uint8",
) -> Path:
    """Export ``model`` to ONNX in the deployment signature and write it atomically.

    torch.onnx.export(dynamo=True) with named ``torch.export.Dim``s for the batch and bag axes; afterwards the
    graph's input and output axes are checked to be symbolic, the ModelInfo JSON is stored in
    ``metadata_props`` under :data:`~milsdk.contract.METADATA_KEY`, the IR version is lowered to what the
    opset needs (:func:`lowest_ir_version`), and ``onnx.checker`` validates the model.

    Args:
        model: a MILModel with in_shape (D,).
        path: destination ``.onnx`` file.
        opset: ONNX opset (default 18, see the module docstring).
        precision: "float32", "float16" (keeps the attention softmax and the outputs float32) or "int8" (the
            float32 graph with int8 weights, :func:`~milsdk.export.quantize.quantize_int8`).
        features_dtype: dtype of the ``features`` input, "float32" (default) or "float16".
        example_batch, example_instances: example sizes, both >= 2 (a size-1 example specialises its axis).
        info: metadata to embed (default :func:`~milsdk.export.signature.model_info` of the model).
        int8_weights: with precision "int8", "uint8" (right on every CPU) or "int8" (faster on CPUs with VNNI /
            AMX, wrong on CPUs with AVX2 only; :func:`~milsdk.export.quantize.quantize_int8`).

    Returns:
        The path written.

    Raises:
        ExportError: the exporter failed, or the graph does not have the contract's names, dtypes or dynamic
            axes.
        ModelConfigError: the model's ``onnx_unsupported`` names why its config cannot be exported to ONNX.
    """
    path = Path(path)
    # a model whose config has no static graph says so (e.g. SETMIL grid="all_cells"): one line, not a trace
    unsupported = getattr(model, "onnx_unsupported", None)
    if unsupported:
        raise ModelConfigError(f"{type(model).__name__}: {unsupported}")
    if int8_weights not in INT8_WEIGHTS or (precision != "int8" and int8_weights != "uint8"):
        raise ExportError(
            f"int8_weights={int8_weights!r}: expected one of {', '.join(INT8_WEIGHTS)}, and 'int8' only with "
            f"precision int8 (got {precision})"
        )
    if precision == "bfloat16":
        raise ExportError(
            "precision bfloat16 is a TorchScript export: onnxruntime's CPU provider has no bfloat16 MatMul "
            "(NOT_IMPLEMENTED); use --format torchscript (the cpu-bf16 profile)"
        )
    module = DeploymentModule(model, precision)
    base = info if info is not None else model_info(model)
    details = {"int8_weights": int8_weights} if precision == "int8" else {}
    info = with_export_details(
        base,
        format="onnx",
        opset=int(opset),
        precision=precision,
        features_dtype=features_dtype,
        example_sizes=[int(example_batch), int(example_instances)],
        **details,
    )
    args = example_inputs(module, example_batch, example_instances, features_dtype)
    with quiet_exporter(), torch.no_grad():
        try:
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                dynamic_shapes=dynamic_shapes(module),
                input_names=module.input_names,
                output_names=[LOGITS, ATTENTION],
                opset_version=int(opset),
                verbose=False,
                report=False,
                optimize=True,
            )
        except Exception as exc:
            raise ExportError(
                f"{info.model_name}: torch.onnx.export failed: {first_line(exc, with_type=True)}"
            ) from exc
    if program is None:
        raise ExportError(f"{info.model_name}: torch.onnx.export returned no program")
    proto = program.model_proto
    if precision == "int8":
        proto = quantize_int8(proto, int8_weights)
    return _check_and_save(proto, info, features_dtype, path)


def quantize_onnx(source: str | os.PathLike, path: str | os.PathLike, int8_weights: str = "uint8") -> Path:
    """Write the int8 export of a float32 milsdk ONNX artifact, without tracing the model again.

    The same graph as ``export_onnx(model, path, precision="int8")`` on the model that ``source`` was exported
    from: :func:`~milsdk.export.quantize.quantize_int8` of the float32 graph, the metadata's export details
    saying ``precision`` "int8", the same checks, written atomically. Tracing a transformer model takes most of
    an export (about 20 s for TransMIL here); a float32 and an int8 artifact of one model need it once.

    Args:
        source: a float32 ``.onnx`` written by :func:`export_onnx` (float32 features).
        path: destination ``.onnx`` file (not ``source``).
        int8_weights: "uint8" or "int8" (:func:`~milsdk.export.quantize.quantize_int8`).

    Returns:
        The path written.

    Raises:
        ArtifactError: ``source`` is missing, unreadable or not a milsdk export.
        ExportError: ``source`` is not a float32 export with float32 features, or quantisation failed.
    """
    path = Path(path)
    if path.resolve() == Path(source).resolve():
        raise ExportError(f"{path}: the int8 export needs a path other than its float32 source")
    proto = load_onnx(source)
    info = read_onnx_info(proto, source=str(source))
    details = info.extra.get("export", {})
    done_as = (details.get("precision"), details.get("features_dtype"))
    if done_as != ("float32", "float32"):
        raise ExportError(
            f"{source}: only a float32 export with float32 features can be quantised to int8; this one has "
            f"precision {done_as[0]} and {done_as[1]} features"
        )
    quantized = quantize_int8(proto, int8_weights)
    details_int8 = with_export_details(info, precision="int8", int8_weights=int8_weights)
    return _check_and_save(quantized, details_int8, "float32", path)


def _check_and_save(proto: onnx.ModelProto, info: ModelInfo, features_dtype: str, path: Path) -> Path:
    """Name the dynamic axes, check the signature, embed ``info``, lower the IR version, validate, write."""
    expected = signature_specs(info, features_dtype)
    _name_dims(proto, expected)
    check_onnx_signature(proto, expected, source=str(path))
    for prop in [p for p in proto.metadata_props if p.key == METADATA_KEY]:
        proto.metadata_props.remove(prop)
    proto.metadata_props.add(key=METADATA_KEY, value=info.to_json())
    proto.doc_string = (
        f"milsdk {info.milsdk_version} export of {info.model_name} (D={info.feature_dim}, C={info.n_classes})"
    )
    # the exporter stamps the IR version of the onnx package it runs with; older runtimes refuse a newer one
    proto.ir_version = lowest_ir_version(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(
            f"{info.model_name}: the exported ONNX model is invalid: {first_line(exc, with_type=True)}"
        ) from exc
    try:
        atomic_write(path, lambda tmp: onnx.save_model(proto, tmp))
    except ValueError as exc:  # protobuf's 2 GB limit
        raise ExportError(f"{path}: cannot save the ONNX model: {first_line(exc, with_type=True)}") from exc
    return path
