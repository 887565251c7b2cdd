"""The deployment contract shared by the exporter (writes it) and the serving client (reads it). No torch here.

Every exported model, ONNX and TorchScript alike, has one signature (DESIGN.md, "Deployment contract"):

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
    "FEATURES",
    "MASK",
    "COORDS",
    "EDGE_INDEX",
    "EDGE_WEIGHT",
    "LOGITS",
    "ATTENTION",
    "INPUT_DTYPES",
    "OUTPUT_DTYPES",
    "EXTRA_INPUTS_BY_KIND",
    "METADATA_KEY",
    "ModelInfo",
]

FEATURES, MASK, COORDS, EDGE_INDEX, EDGE_WEIGHT = "features", "mask", "coords", "edge_index", "edge_weight"
LOGITS, ATTENTION = "logits", "attention"

#: numpy dtype names of each input and output.
INPUT_DTYPES = {FEATURES: "float32", MASK: "bool", COORDS: "float32", EDGE_INDEX: "int64", EDGE_WEIGHT: "float32"}
OUTPUT_DTYPES = {LOGITS: "float32", ATTENTION: "float32"}

#: deployment inputs a model needs, by what its forward takes besides X and mask.
EXTRA_INPUTS_BY_KIND = {"coords": (COORDS,), "adj": (EDGE_INDEX, EDGE_WEIGHT)}

#: the single metadata key holding the JSON-encoded ModelInfo (ONNX metadata_props key, TorchScript extra file).
METADATA_KEY = "milsdk.json"


@dataclass
class ModelInfo:
    """What a client needs to know about an exported model, stored inside the artifact.

    Attributes:
        model_name: registered model name, e.g. "ABMIL".
        feature_dim: D, the size of one instance feature vector.
        n_classes: C, number of logits per bag (1 = binary).
        output_activation: "sigmoid" (C = 1) or "softmax" (C > 1): how logits become probabilities.
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
        if info.output_activation not in ("sigmoid", "softmax"):
            raise ArtifactError(f"{source}: unknown output_activation {info.output_activation!r}")
        if int(info.feature_dim) < 1 or int(info.n_classes) < 1:
            raise ArtifactError(f"{source}: feature_dim and n_classes must be >= 1")
        return info

    @property
    def extra_inputs(self) -> list[str]:
        """Inputs besides features and mask (coords, edge_index, edge_weight)."""
        return [name for name in self.inputs if name not in (FEATURES, MASK)]
