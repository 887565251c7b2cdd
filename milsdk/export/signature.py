"""The deployment signature as a module: one wrapper that gives every registered model the contract's inputs
and outputs, and the metadata (:class:`~milsdk.contract.ModelInfo`) that travels inside the artifact.

Contract (DESIGN.md, "Deployment contract")::

    forward(features (B, N, D) float32, mask (B, N) bool
            [, coords (B, N, 2) float32 | , edge_index (B, 2, E) int64, edge_weight (B, E) float32])
        -> logits (B, C) float32 (C = 1 for binary), attention (B, N) float32

The inputs a model takes come from the contract's table (:func:`milsdk.contract.input_names` of its
``extra_inputs``); each set of inputs has one wrapper variant here (TorchScript and Triton's PyTorch backend bind
inputs by the forward's argument names and count).

``attention`` sums to 1 over the real instances and is 0 on padding (``model.deployment_attention``).
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from typing import Any, Tuple

import torch

from milsdk._version import __version__
import numpy as np

from milsdk.contract import AXIS_NAMES, FEATURES, ModelInfo, input_kind, input_names
from milsdk.errors import ExportError
from milsdk.export.bags import random_batch
from milsdk.nn.linear import to_bfloat16_linears

__all__ = [
    "FEATURE_DTYPES",
    "PRECISIONS",
    "DeploymentModule",
    "check_exportable",
    "dynamic_shapes",
    "example_inputs",
    "model_info",
    "with_export_details",
]

#: compute precisions an export can use. Inputs other than features and all outputs stay float32. int8 is ONNX
#: only: the float32 graph's weights quantised after export (:mod:`milsdk.export.quantize`). bfloat16 is
#: TorchScript only: the Linear layers' products in bfloat16, the rest float32 (onnxruntime's CPU provider has
#: no bfloat16 MatMul).
PRECISIONS = ("float32", "float16", "bfloat16", "int8")
#: dtypes the ``features`` input can have.
FEATURE_DTYPES = ("float32", "float16")
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def _model_name(model: torch.nn.Module) -> str:
    return str(getattr(type(model), "model_name", type(model).__name__))


def check_exportable(model: torch.nn.Module) -> int:
    """Check that ``model`` fits the deployment signature and return its feature size D.

    Raises:
        ExportError: not a MILModel, unknown or multi-axis instance shape, or an extra input the signature
            does not carry yet (graph models: ``adj``).
    """
    from milsdk.models import MILModel

    name = _model_name(model)
    if not isinstance(model, MILModel):
        raise ExportError(
            f"{name}: only milsdk MILModel subclasses can be exported, got {type(model).__name__}"
        )
    in_shape = model.in_shape
    if in_shape is None:
        raise ExportError(
            f"{name}: its input size is unknown (built with in_shape=None and never run); pass in_shape"
        )
    if len(in_shape) != 1:
        raise ExportError(
            f"{name}: in_shape {tuple(in_shape)} is not (D,); the deployment signature takes (B, N, D)"
        )
    if tuple(model.extra_inputs) not in _ROUTES:
        raise ExportError(
            f"{name}: extra inputs {tuple(model.extra_inputs)} have no deployment signature; the signatures "
            f"take {', '.join(repr(k) for k in _ROUTES)} besides features and mask"
        )
    return int(in_shape[0])


class DeploymentModule(torch.nn.Module):
    """Wrap a MIL model in the deployment signature (scriptable, exportable with dynamic B and N).

    ``DeploymentModule(model)`` returns the variant whose ``forward`` takes exactly the inputs the model needs
    (``features, mask``; ``features, mask, coords``; or ``features, mask, edge_index, edge_weight`` for graph
    models), because TorchScript and Triton's PyTorch backend bind inputs by the forward's argument names and
    count.

    Args:
        model: a MILModel with ``in_shape=(D,)`` (eval mode is set).
        precision: "float32", "float16", "bfloat16" or "int8". With float16 a half-precision copy of the model
            runs inside: features are cast on entry, the masked softmax of the attention and the outputs stay
            float32. With bfloat16 a copy whose ``nn.Linear`` layers are :class:`~milsdk.nn.linear.Bfloat16Linear`
            runs inside: each Linear casts its input to bfloat16 and returns float32, everything else (norms,
            activations, attention products, softmaxes, pooling) stays float32. int8 traces the float32 model
            (the ONNX exporter quantises the graph afterwards).

    Shapes:
        features: (B, N, D) float32 (or float16), zero-padded; mask: (B, N) bool, True = real instance;
        coords: (B, N, 2) float32 (only for models with ``extra_inputs = ("coords",)``);
        edge_index: (B, 2, E) int64, edge_weight: (B, E) float32 (graph models, ``extra_inputs = ("adj",)``):
        each bag's adjacency as COO entries (row, column) with local indices, padded with edges of weight 0.
        Returns logits (B, C) float32 (C = 1 for binary) and attention (B, N) float32, summing to 1 over the
        real instances, 0 on padding.
    """

    # constants, so that TorchScript compiles only the branches this model takes
    __constants__ = ("binary", "half_precision")
    __jit_unused_properties__ = ("input_names",)

    def __new__(  # noqa: PYI034
        cls, model: torch.nn.Module | None = None, *args: Any, **kwargs: Any
    ) -> DeploymentModule:
        # model is None when copy / pickle recreate an instance; its class is then already the right variant
        variant = _ROUTES.get(tuple(getattr(model, "extra_inputs", ())), cls)
        return super().__new__(variant if cls is DeploymentModule else cls)

    def __init__(self, model: torch.nn.Module, precision: str = "float32") -> None:
        super().__init__()
        check_exportable(model)
        if precision not in PRECISIONS:
            raise ExportError(
                f"{_model_name(model)}: precision must be one of {PRECISIONS}, got {precision!r}"
            )
        if precision == "float16":
            model = copy.deepcopy(model).half()
        elif precision == "bfloat16":
            model = copy.deepcopy(model)
            to_bfloat16_linears(model)
        self.model = model.eval()
        self.precision = precision
        self.binary = model.n_outputs == 1
        self.half_precision = precision == "float16"
        self.eval()

    @property
    def input_names(self) -> list[str]:
        """Contract input names in forward's order (from the contract's table)."""
        return input_names(tuple(self.model.extra_inputs))

    def _compute(self, x: torch.Tensor) -> torch.Tensor:
        return x.half() if self.half_precision else x.float()

    def _contract_outputs(
        self, logits: torch.Tensor, att: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.binary:
            logits = logits.unsqueeze(-1)
        attention = self.model.deployment_attention(att, mask)
        return logits.float(), attention.float()

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, N, D), mask (B, N)) -> (logits (B, C), attention (B, N))."""
        out = self.model(self._compute(features), mask, return_att=True)
        # forward(..., return_att=True) returns (logits, attention). A model's declared return type is a union
        # ("logits | (logits, attention) | (logits, attention, embeddings)" for models with more flags): the
        # refinement lets TorchScript pick the pair.
        assert torch.jit.isinstance(out, Tuple[torch.Tensor, torch.Tensor])
        return self._contract_outputs(out[0], out[1], mask)


class _CoordsDeploymentModule(DeploymentModule):
    """The signature of models that also take instance positions (``extra_inputs = ("coords",)``)."""

    def forward(  # type: ignore[override]
        self, features: torch.Tensor, mask: torch.Tensor, coords: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, N, D), mask (B, N), coords (B, N, 2)) -> (logits (B, C), attention (B, N))."""
        # coords stay float32: float16 integers are exact only up to 2048 (a slide grid can be larger)
        out = self.model(self._compute(features), mask, coords=coords.float(), return_att=True)
        assert torch.jit.isinstance(out, Tuple[torch.Tensor, torch.Tensor])
        return self._contract_outputs(out[0], out[1], mask)


class _GraphDeploymentModule(DeploymentModule):
    """The signature of graph models (``extra_inputs = ("adj",)``): the adjacency as a batched edge list."""

    def forward(  # type: ignore[override]
        self, features: torch.Tensor, mask: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, N, D), mask (B, N), edge_index (B, 2, E), edge_weight (B, E)) -> (logits (B, C),
        attention (B, N))."""
        out = self.model(
            self._compute(features), mask=mask, edge_index=edge_index, edge_weight=edge_weight, return_att=True
        )
        assert torch.jit.isinstance(out, Tuple[torch.Tensor, torch.Tensor])
        return self._contract_outputs(out[0], out[1], mask)


#: the wrapper variant of each ``MILModel.extra_inputs``: one route per set of deployment inputs.
_ROUTES: dict[tuple[str, ...], type[DeploymentModule]] = {
    (): DeploymentModule,
    ("coords",): _CoordsDeploymentModule,
    ("adj",): _GraphDeploymentModule,
}


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def model_info(
    model: torch.nn.Module, metadata: dict[str, Any] | None = None, extra: dict[str, Any] | None = None
) -> ModelInfo:
    """The metadata stored inside an artifact of ``model``.

    Args:
        model: the MILModel being exported.
        metadata: checkpoint metadata (``class_names``, ``threshold``, ``feature_extractor``, ...); default
            the
            ``checkpoint_metadata`` a loaded model carries.
        extra: export details merged into ``ModelInfo.extra`` (format, precision, opset ...).

    Returns:
        ModelInfo with n_classes C, activation sigmoid (C = 1) / softmax, class names, input names,
        padding invariance, milsdk version; the rest of the checkpoint metadata under ``extra["metadata"]``.

    Raises:
        ExportError: the model does not fit the signature, or ``class_names`` has the wrong length (C names,
            or 2 for a binary model).
    """
    name = _model_name(model)
    feature_dim = check_exportable(model)
    md = dict(metadata if metadata is not None else getattr(model, "checkpoint_metadata", None) or {})
    n_classes = int(model.n_outputs)
    class_names = [str(c) for c in (md.pop("class_names", None) or [])]
    expected = 2 if n_classes == 1 else n_classes
    if class_names and len(class_names) != expected:
        raise ExportError(
            f"{name}: checkpoint metadata class_names has {len(class_names)} names, the model needs "
            f"{expected} ({'negative and positive class' if n_classes == 1 else 'one per logit'})"
        )
    try:
        threshold = float(md.pop("threshold", 0.5))
    except (TypeError, ValueError):
        raise ExportError(f"{name}: checkpoint metadata threshold is not a number") from None
    inputs = input_names(tuple(model.extra_inputs))
    info_extra: dict[str, Any] = {}
    if md:
        info_extra["metadata"] = _json_safe(md)
    info_extra.update(_json_safe(extra or {}))
    return ModelInfo(
        model_name=name,
        feature_dim=feature_dim,
        n_classes=n_classes,
        output_activation=(
            "risk"
            if getattr(getattr(model, "criterion", None), "survival", False)
            else "sigmoid" if n_classes == 1 else "softmax"
        ),
        class_names=class_names,
        threshold=threshold,
        inputs=inputs,
        padding_invariant=bool(model.padding_invariant),
        padding_note=str(model.padding_note),
        milsdk_version=__version__,
        extra=info_extra,
    )


def with_export_details(info: ModelInfo, **details: Any) -> ModelInfo:
    """A copy of ``info`` whose ``extra["export"]`` also holds ``details`` (format, precision, opset ...)."""
    extra = dict(info.extra)
    extra["export"] = {**extra.get("export", {}), **_json_safe(details)}
    return replace(info, extra=extra)


def example_inputs(
    module: DeploymentModule,
    batch: int = 2,
    n_instances: int = 16,
    features_dtype: str = "float32",
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    """Example inputs for tracing / torch.export, in forward's order.

    The last bag is shorter than the others so that the mask holds padding (nothing is specialised on an
    all-True mask). Sizes of 1 are refused: an example of size 1 specialises that axis (DESIGN.md, "Known
    pitfalls").

    Returns:
        The padded tensors of :func:`milsdk.export.bags.random_batch` in forward's order: features (batch, n,
        D), mask (batch, n) bool[, coords (batch, n, 2) | edge_index (batch, 2, E), edge_weight (batch, E)].
    """
    if batch < 2 or n_instances < 2:
        raise ExportError(
            f"example sizes must be >= 2 (got batch={batch}, n_instances={n_instances}): an example of "
            "size 1 specialises that axis to 1"
        )
    D = int(module.model.in_shape[0])
    # the last bag is shorter: the mask holds padding, and the edge count differs between bags
    lengths = [n_instances] * (batch - 1) + [n_instances // 2 + 1]
    arrays = random_batch(lengths, n_instances, D, module.input_names, np.random.default_rng(seed))
    tensors = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in arrays.items()}
    tensors[FEATURES] = tensors[FEATURES].to(_TORCH_DTYPES[features_dtype])
    return tuple(tensors[name] for name in module.input_names)


def dynamic_shapes(module: DeploymentModule) -> dict[str, dict[int, Any]]:
    """``torch.export`` dynamic shapes from the contract's table: one named Dim per symbolic axis (batch,
    n_instances, n_edges), shared by every input that has it."""
    dims = {axis: torch.export.Dim(name, min=1) for axis, name in AXIS_NAMES.items()}
    return {
        name: {i: dims[d] for i, d in enumerate(input_kind(name).shape) if d in dims}
        for name in module.input_names
    }
