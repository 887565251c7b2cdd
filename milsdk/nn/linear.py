"""Linear layers with optional lazy input size, and the feature-size probe used by every model."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["LazyLinear", "get_feat_dim"]


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
