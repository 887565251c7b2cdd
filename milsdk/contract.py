"""The deployment contract shared by the exporter (writes it) and the serving client (reads it). No torch here.

Every exported model, ONNX and TorchScript alike, has one signature (DESIGN.md, "Deployment contract"). It is
one table, :data:`INPUT_KINDS` (and :data:`OUTPUT_KINDS`): everything that needs the inputs — export specs and
dynamic shapes, example and verification batches, Triton config dims, the client's padding — reads it, so a new
input kind is one row (plus one route in the export wrapper):

========================  =========  ==========  =====================================================
name                      dtype      shape       meaning
========================  =========  ==========  =====================================================
``features``              float32    [B, N, D]   instance features, zero-padded
``mask``                  bool       [B, N]      True = real instance
``coords``                float32    [B, N, 2]   only for models that use positions
``edge_index``            int64      [B, 2, E]   only for graph models
``edge_weight``           float32    [B, E]      only for graph models; padded edges weigh 0
``logits`` (output)       float32    [B, C]      bag logits (C = 1 for binary)
``attention`` (output)    float32    [B, N]      sums to 1 over the real instances, 0 on padding
========================  =========  ==========  =====================================================

Model metadata travels inside the artifact as string key/values (ONNX ``metadata_props``, TorchScript
``_extra_files["milsdk.json"]``), described by :class:`ModelInfo`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from milsdk.errors import ArtifactError

__all__ = [
    "AXIS_NAMES",
    "INPUT_KINDS",
    "OUTPUT_KINDS",
    "InputKind",
    "OutputKind",
    "input_kind",
    "input_names",
    "FEATURES",
    "MASK",
    "COORDS",
    "EDGE_INDEX",
    "EDGE_WEIGHT",
    "LOGITS",
    "ATTENTION",
    "FEATURES_CHECK",
    "INPUT_DTYPES",
    "OUTPUT_DTYPES",
    "METADATA_KEY",
    "ModelInfo",
    "input_shape_error",
]

FEATURES, MASK, COORDS, EDGE_INDEX, EDGE_WEIGHT = "features", "mask", "coords", "edge_index", "edge_weight"
LOGITS, ATTENTION = "logits", "attention"
#: not part of the deployment signature: the output the onnxruntime backend adds to the graph it loads, each
#: bag's NaN/inf test of its features (:mod:`milsdk.serving.backends.features_check`).
FEATURES_CHECK = "features_check"

#: symbolic axes of the contract and their names in an exported graph (ONNX dim_param, Triton -1).
AXIS_NAMES = {"B": "batch", "N": "n_instances", "E": "n_edges"}


@dataclass(frozen=True)
class InputKind:
    """One deployment input.

    Attributes:
        name: the input's name in every artifact and request.
        dtype: numpy dtype name.
        shape: one entry per axis: a symbolic axis of :data:`AXIS_NAMES` ("B", "N", "E"), "D" (the model's
            feature size) or a fixed int.
        pad_value: what padded positions hold.
        feeds: the model ``forward`` argument it feeds.
        needed_by: the ``MILModel.extra_inputs`` entry that makes a model take it; None = every model.
        derived: built by the client from the bag sizes (the mask), not read from the bag.
    """

    name: str
    dtype: str
    shape: tuple[str | int, ...]
    pad_value: float | int | bool
    feeds: str
    needed_by: str | None = None
    derived: bool = False

    def dims(self, feature_dim: int) -> tuple[str | int, ...]:
        """The shape with "D" resolved and symbolic axes named as in an exported graph."""
        return tuple(feature_dim if d == "D" else AXIS_NAMES.get(d, d) if isinstance(d, str) else d for d in self.shape)


@dataclass(frozen=True)
class OutputKind:
    """One deployment output: name, numpy dtype, shape ("C" = the model's logits per bag)."""

    name: str
    dtype: str
    shape: tuple[str | int, ...]

    def dims(self, n_classes: int) -> tuple[str | int, ...]:
        """The shape with "C" resolved and symbolic axes named as in an exported graph."""
        return tuple(n_classes if d == "C" else AXIS_NAMES.get(d, d) if isinstance(d, str) else d for d in self.shape)


#: the deployment inputs, in the order an artifact takes them.
INPUT_KINDS: tuple[InputKind, ...] = (
    InputKind(FEATURES, "float32", ("B", "N", "D"), 0.0, "X"),
    InputKind(MASK, "bool", ("B", "N"), False, "mask", derived=True),
    InputKind(COORDS, "float32", ("B", "N", 2), 0.0, "coords", needed_by="coords"),
    # padded edges are 0 -> 0 of weight 0: an edge of weight 0 is no edge
    InputKind(EDGE_INDEX, "int64", ("B", 2, "E"), 0, "edge_index", needed_by="adj"),
    InputKind(EDGE_WEIGHT, "float32", ("B", "E"), 0.0, "edge_weight", needed_by="adj"),
)
#: the deployment outputs.
OUTPUT_KINDS: tuple[OutputKind, ...] = (
    OutputKind(LOGITS, "float32", ("B", "C")),
    OutputKind(ATTENTION, "float32", ("B", "N")),
)
_BY_NAME = {kind.name: kind for kind in INPUT_KINDS}

#: numpy dtype names of each input and output.
INPUT_DTYPES = {kind.name: kind.dtype for kind in INPUT_KINDS}
OUTPUT_DTYPES = {kind.name: kind.dtype for kind in OUTPUT_KINDS}


def input_kind(name: str) -> InputKind:
    """The row of input ``name``; ValueError for a name the contract does not have."""
    if name not in _BY_NAME:
        raise ValueError(f"{name!r} is not a deployment input; inputs are {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def input_names(extra_inputs: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The inputs of a model whose forward takes ``extra_inputs`` (e.g. ("coords",), ("adj",)) besides X and
    mask, in the table's order."""
    unknown = [e for e in extra_inputs if e not in {k.needed_by for k in INPUT_KINDS}]
    if unknown:
        raise ValueError(f"extra inputs {unknown} have no deployment input; known: coords, adj")
    return [k.name for k in INPUT_KINDS if k.needed_by is None or k.needed_by in extra_inputs]


def input_shape_error(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """What is inconsistent in one request's input shapes, by the table's shapes, or None when they agree.

    Inputs must agree on every symbolic axis they share (B, N, E) and match the fixed sizes; D is checked
    against the model's metadata elsewhere. Names the table does not have are ignored.

    Args:
        shapes: {input name: shape}, e.g. {"features": (2, 7, 64), "mask": (2, 6)}.

    Returns:
        One line naming the inputs and their shapes, e.g. "features has shape (2, 7, 64) and mask (2, 6): they
        disagree on N, the number of instances (7 vs 6)".
    """
    meaning = {"B": "the batch size", "N": "the number of instances", "E": "the number of edges"}
    seen: dict[str, tuple[str, int]] = {}
    for name, raw in shapes.items():
        if name not in _BY_NAME:
            continue
        axes, shape = _BY_NAME[name].shape, tuple(int(d) for d in raw)
        if len(shape) != len(axes):
            return f"{name} has shape {shape}, expected {len(axes)} axes ({', '.join(map(str, axes))})"
        for axis, size in zip(axes, shape):
            if isinstance(axis, int) and size != axis:
                return f"{name} has shape {shape}, expected ({', '.join(map(str, axes))})"
            if axis in meaning:
                if axis in seen and seen[axis][1] != size:
                    other = seen[axis][0]
                    return (
                        f"{other} has shape {tuple(int(d) for d in shapes[other])} and {name} {shape}: they "
                        f"disagree on {axis}, {meaning[axis]} ({seen[axis][1]} vs {size})"
                    )
                seen.setdefault(axis, (name, size))
    return None


#: the single metadata key holding the JSON-encoded ModelInfo (ONNX metadata_props key, TorchScript extra file).
METADATA_KEY = "milsdk.json"


@dataclass
class ModelInfo:
    """What a client needs to know about an exported model, stored inside the artifact.

    Attributes:
        model_name: registered model name, e.g. "ABMIL".
        feature_dim: D, the size of one instance feature vector.
        n_classes: C, number of logits per bag (1 = binary).
        output_activation: "sigmoid" (C = 1) or "softmax" (C > 1): how logits become probabilities; "risk"
            for a survival model (C = 1), whose logit is a risk score (higher = earlier event), not a class.
        class_names: C names (binary: the names of the negative and positive class, 2 entries), or empty.
        threshold: probability threshold for the positive label (binary models).
        inputs: the artifact's input names in order, e.g. ["features", "mask"].
        padding_invariant: whether a bag's outputs do not depend on padding; if False the client never pads.
        padding_note: why a model is not padding-invariant (empty when it is).
        milsdk_version: version that exported it.
        extra: free-form extras (feature extractor name, training summary, export settings).
    """

    model_name: str
    feature_dim: int
    n_classes: int = 1
    output_activation: str = "sigmoid"
    class_names: list[str] = field(default_factory=list)
    threshold: float = 0.5
    inputs: list[str] = field(default_factory=lambda: [FEATURES, MASK])
    padding_invariant: bool = True
    padding_note: str = ""
    milsdk_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The JSON string stored under :data:`METADATA_KEY`."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "artifact") -> ModelInfo:
        """Parse and validate the stored JSON; ``source`` names the artifact in errors."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"{source}: milsdk metadata is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ArtifactError(f"{source}: milsdk metadata is not a JSON object")
        known = set(cls.__dataclass_fields__)
        missing = [k for k in ("model_name", "feature_dim") if k not in data]
        if missing:
            raise ArtifactError(f"{source}: milsdk metadata lacks {missing}")
        info = cls(**{k: v for k, v in data.items() if k in known})
        if info.output_activation not in ("sigmoid", "softmax", "risk"):
            raise ArtifactError(f"{source}: unknown output_activation {info.output_activation!r}")
        if int(info.feature_dim) < 1 or int(info.n_classes) < 1:
            raise ArtifactError(f"{source}: feature_dim and n_classes must be >= 1")
        return info

    @property
    def extra_inputs(self) -> list[str]:
        """Inputs besides features and mask (coords, edge_index, edge_weight)."""
        return [name for name in self.inputs if name not in (FEATURES, MASK)]
