r"""N-dimensional sinusoidal positional encoding (Vaswani et al., NeurIPS 2017, extended to n axes).

Each of the n axes gets :math:`c = 2\lceil C / 2n\rceil` channels; for a position :math:`p` on that axis and
frequency :math:`\omega_k = 10000^{-2k/c}` they hold :math:`(\sin p\omega_0, \cos p\omega_0, \sin p\omega_1,
\cos p\omega_1, \dots)`. The axes are concatenated and cut to the C channels of the input.
"""

from __future__ import annotations

import torch

__all__ = ["SinusoidalPositionalEncodingND"]


class SinusoidalPositionalEncodingND(torch.nn.Module):
    """Sinusoidal positional encoding of an n-D grid (returns the encoding; it does not add it to the input).

    Args:
        n_dim: number of grid axes n.
        channels: channels C of the inputs it encodes.
        dtype_override: dtype of the encoding (default: the input's).
    """

    def __init__(self, n_dim: int, channels: int, dtype_override: torch.dtype | None = None) -> None:
        super().__init__()
        if n_dim < 1 or channels < 1:
            raise ValueError(
                f"SinusoidalPositionalEncodingND: n_dim and channels must be >= 1, got {n_dim}, {channels}"
            )
        self.n_dim, self.org_channels = n_dim, channels
        per_axis = -(-channels // (2 * n_dim)) * 2
        self.channels = per_axis
        self.dtype_override = dtype_override
        inv_freq = 1.0 / (10000 ** (torch.arange(0, per_axis, 2, dtype=torch.float32) / per_axis))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def encode(self, positions: torch.Tensor) -> torch.Tensor:
        """Encoding of arbitrary (possibly fractional) positions.

        Args:
            positions: (..., n_dim) positions, one per axis.

        Returns:
            (..., channels) float32.
        """
        angles = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq  # (..., n, c/2)
        emb = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # (..., n, c), sin/cos interleaved
        return emb.flatten(-2)[..., : self.org_channels]

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        """Encoding of every cell of the input's grid.

        Args:
            tensor: (B, d_1, ..., d_n, C).

        Returns:
            (B, d_1, ..., d_n, C) encoding of each cell's index (identical over the batch).

        Raises:
            ValueError: the input does not have n + 2 axes or C differs from ``channels``.
        """
        if tensor.dim() != self.n_dim + 2:
            raise ValueError(
                f"SinusoidalPositionalEncodingND: expected a {self.n_dim + 2}-D input (B, d_1..d_n, C), "
                f"got shape {list(tensor.shape)}"
            )
        if tensor.shape[-1] != self.org_channels:
            raise ValueError(
                f"SinusoidalPositionalEncodingND: expected {self.org_channels} channels, got {tensor.shape[-1]}"
            )
        axes = [torch.arange(tensor.shape[i + 1], device=tensor.device) for i in range(self.n_dim)]
        grid = torch.stack(torch.meshgrid(axes, indexing="ij"), dim=-1)  # (d_1, ..., d_n, n)
        emb = self.encode(grid.to(tensor.device))
        dtype = self.dtype_override if self.dtype_override is not None else tensor.dtype
        return emb.to(dtype).unsqueeze(0).expand(tensor.shape).contiguous()
