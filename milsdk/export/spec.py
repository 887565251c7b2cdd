"""Tensor specs of the deployment signature: names, dtypes and dims (symbolic names for the dynamic axes).

The single source of the names and dtypes is :mod:`milsdk.contract`; this module adds the shapes, so that the
exporters, the Triton writer and ``milsdk inspect`` describe an artifact the same way. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

from milsdk.contract import AXIS_NAMES, FEATURES, OUTPUT_KINDS, ModelInfo, input_kind

__all__ = ["BATCH_DIM", "DYNAMIC_DIMS", "EDGE_DIM", "INSTANCE_DIM", "TensorSpec", "signature_specs"]

#: symbolic names of the dynamic axes, as they appear in an exported ONNX graph.
BATCH_DIM = AXIS_NAMES["B"]
INSTANCE_DIM = AXIS_NAMES["N"]
EDGE_DIM = AXIS_NAMES["E"]
DYNAMIC_DIMS = (BATCH_DIM, INSTANCE_DIM, EDGE_DIM)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an artifact.

    Attributes:
        name: contract name (``features``, ``mask``, ``logits`` ...).
        dtype: numpy dtype name (``float32``, ``float16``, ``bool``, ``int64``).
        shape: one entry per axis: an int for a fixed size, a str for a symbolic (dynamic) axis.
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """{axis: symbolic name} of the axes whose size varies."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def describe(self) -> str:
        """``features: float32 [batch, n_instances, 1024]``."""
        return f"{self.name}: {self.dtype} [{', '.join(str(d) for d in self.shape)}]"


def signature_specs(
    info: ModelInfo, features_dtype: str = "float32"
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The inputs and outputs an exported model must have, from its metadata.

    Args:
        info: the artifact's metadata (``inputs``, ``feature_dim``, ``n_classes``).
        features_dtype: dtype of the ``features`` input (``float32``, or ``float16`` for a float16-I/O
            export).

    Returns:
        (inputs, outputs) from the contract's table: features [batch, n_instances, D], mask [batch,
        n_instances], coords [batch, n_instances, 2] / edge_index [batch, 2, n_edges], edge_weight [batch,
        n_edges] when the model takes them; logits [batch, C], attention [batch, n_instances].
    """
    inputs = []
    for name in info.inputs:
        try:
            kind = input_kind(name)
        except ValueError:
            raise ValueError(f"signature_specs: input {name!r} has no deployment spec") from None
        dtype = features_dtype if name == FEATURES else kind.dtype
        inputs.append(TensorSpec(name, dtype, kind.dims(int(info.feature_dim))))
    outputs = [TensorSpec(k.name, k.dtype, k.dims(int(info.n_classes))) for k in OUTPUT_KINDS]
    return inputs, outputs
