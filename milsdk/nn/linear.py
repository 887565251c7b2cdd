"""Linear layers with optional lazy input size, and the feature-size probe used by every model."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "BFLOAT16_ROW_CHUNK", "MIN_BFLOAT16_OUTPUTS", "Bfloat16Linear", "LazyLinear", "get_feat_dim",
    "linear_in_weight_dtype", "to_bfloat16_linears",
]


def LazyLinear(
    in_features: int | None = None,
    out_features: int = 512,
    bias: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.nn.Module:
    """``nn.Linear(in_features, out_features)``, or ``nn.LazyLinear(out_features)`` when ``in_features`` is None.

    Args:
        in_features: input size D, or None to infer it at the first forward.
        out_features: output size.

    Returns:
        A module mapping (..., D) -> (..., out_features).
    """
    if in_features is None:
        return torch.nn.LazyLinear(out_features, bias=bias, device=device, dtype=dtype)
    return torch.nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)


def get_feat_dim(feat_ext: torch.nn.Module, input_shape: Sequence[int]) -> int:
    """Size of the last axis of ``feat_ext(zeros(1, 1, *input_shape))``.

    Args:
        feat_ext: instance feature extractor applied to (B, N, *input_shape).
        input_shape: shape of one instance, e.g. (D,).

    Returns:
        The feature size the extractor produces.
    """
    with torch.no_grad():
        was_training = feat_ext.training
        feat_ext.eval()
        out = feat_ext(torch.zeros(1, 1, *input_shape))
        feat_ext.train(was_training)
    return int(out.shape[-1])


#: rows per block of a :func:`linear_in_weight_dtype` product in another dtype. Casting a whole 100,000 x 1024 bag
#: to bfloat16 writes 205 MB of fresh memory (page faults, then a second read by the product): 117 ms for the cast
#: and a 1024 -> 128 product on a 2-core Xeon with AMX, against 48 ms in blocks of 8,192 rows (16,000 rows: 8.4
#: against 5.5 ms; the same numbers bit for bit).
BFLOAT16_ROW_CHUNK = 8192


def linear_in_weight_dtype(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, row_chunk: int = BFLOAT16_ROW_CHUNK
) -> torch.Tensor:
    """``F.linear`` computed in the weight's dtype, returned in the input's.

    With weights of the input's dtype this is ``F.linear`` itself; with the bfloat16 weights of a
    :class:`Bfloat16Linear` the matrix product runs in bfloat16 (AMX / AVX-512 BF16 kernels accumulate in float32)
    while everything around it stays float32, in blocks of ``row_chunk`` rows (:data:`BFLOAT16_ROW_CHUNK`).

    Shapes:
        x: (..., in_features); weight: (out_features, in_features); bias: (out_features,). Returns
        (..., out_features) in x's dtype.
    """
    if weight.dtype == x.dtype:
        return torch.nn.functional.linear(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1])
    rows = flat.shape[0]
    if rows <= row_chunk:
        return torch.nn.functional.linear(flat.to(weight.dtype), weight, bias).to(x.dtype).reshape(
            x.shape[:-1] + (weight.shape[0],))
    # row blocks: each block's cast stays in cache and its buffer is reused, instead of a cast of the whole input
    # into fresh memory (module constant's docstring)
    out = torch.empty(rows, weight.shape[0], dtype=x.dtype, device=x.device)
    for start in range(0, rows, row_chunk):
        stop = min(start + row_chunk, rows)
        out[start:stop] = torch.nn.functional.linear(flat[start:stop].to(weight.dtype), weight, bias)
    return out.reshape(x.shape[:-1] + (weight.shape[0],))


class Bfloat16Linear(torch.nn.Module):
    """A Linear layer whose weight and bias are bfloat16 and whose matrix product runs in bfloat16: float32 in,
    float32 out (:func:`linear_in_weight_dtype`). Made from a trained ``nn.Linear`` by :meth:`from_linear`; the
    state-dict keys stay ``weight`` / ``bias``.

    Shapes:
        x: (..., in_features) -> (..., out_features), in x's dtype.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features = int(weight.shape[1])
        self.out_features = int(weight.shape[0])
        self.weight = torch.nn.Parameter(weight.detach().to(torch.bfloat16), requires_grad=False)
        if bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = torch.nn.Parameter(bias.detach().to(torch.bfloat16), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> Bfloat16Linear:
        """The bfloat16 copy of ``linear`` (its weights rounded to bfloat16)."""
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features)."""
        return linear_in_weight_dtype(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


#: Linear layers with fewer outputs stay float32 (see :func:`to_bfloat16_linears`).
MIN_BFLOAT16_OUTPUTS = 16


def to_bfloat16_linears(model: torch.nn.Module) -> int:
    """Replace, in place, every ``nn.Linear`` of ``model`` with at least :data:`MIN_BFLOAT16_OUTPUTS` outputs
    (exactly that class: subclasses such as ``NonDynamicallyQuantizableLinear`` are read by their owners' own
    code) with its :class:`Bfloat16Linear`. Everything else (norms, convolutions, attention products, softmaxes,
    the parameters read directly as weights of :func:`linear_in_weight_dtype` calls, which follow their Linear)
    keeps its dtype.

    Narrow layers stay float32 because their outputs are rounded to bfloat16 (torch's CPU products return their
    inputs' dtype) and they are the attention scores and the logits, where 8 significant bits show: with every
    layer converted, the demo's trained ABMIL moved a logit by 0.055 and an attention weight by 0.015 (bags of
    5,000); with only the layers of >= 16 outputs converted, 0.0052 and 0.0040. Their products are a few dot
    products per instance, memory-bound in any precision, so nothing is lost in speed.

    Returns:
        How many layers were replaced.
    """
    targets = [(name, module) for name, module in model.named_modules(remove_duplicate=False)
               if name and type(module) is torch.nn.Linear and module.out_features >= MIN_BFLOAT16_OUTPUTS]
    converted: dict[int, Bfloat16Linear] = {}  # a layer shared by two owners stays one layer
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if id(linear) not in converted:
            converted[id(linear)] = Bfloat16Linear.from_linear(linear)
        setattr(parent, child, converted[id(linear)])
    return len(converted)
