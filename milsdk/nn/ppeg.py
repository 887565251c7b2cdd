"""PPEG, the Pyramid Position Encoding Generator of TransMIL (Shao et al., NeurIPS 2021), for batches of bags
whose square token maps have different sides; plus the export-safe ``ceil(sqrt(.))`` the square maps need."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["PPEG", "ceil_sqrt", "grid_side"]


def ceil_sqrt(n: torch.Tensor) -> torch.Tensor:
    """Exact elementwise ceil(sqrt(n)) of non-negative integers (e.g. the side of each bag's square map).

    Float32 square root, then one integer correction each way, so the result is exact for any n < 2**48 and
    the graph exports (no float64, no Python ints).

    Args:
        n: integer tensor, any shape, values >= 0.

    Returns:
        Long tensor of the same shape.
    """
    n = n.to(torch.long)
    s = torch.sqrt(n.to(torch.float32)).ceil().to(torch.long)
    s = s - ((s > 0) & ((s - 1) * (s - 1) >= n)).to(torch.long)
    return s + (s * s < n).to(torch.long)


def grid_side(n: int) -> int:
    """ceil(sqrt(n)) of a size, computed so that it stays symbolic under ``torch.export``.

    Python math on a traced size would freeze it to the example's value and the artifact would be silently
    wrong at other sizes. Eagerly and under TorchScript this is integer math (dynamic in a scripted graph).
    Under ``torch.export`` / ``torch.compile`` the value goes through a tensor and ``.item()``, which gives a
    fresh symbolic size (ONNX: Sqrt / Ceil on the shape, then Range / Expand over it); plain
    ``torch.sym_sqrt`` has no ONNX translation and defeats the shape solver on reshapes.

    Args:
        n: a size (int or SymInt), >= 0.

    Returns:
        The smallest S >= 0 with S * S >= n.
    """
    if torch.jit.is_scripting() or not torch.compiler.is_compiling():
        s = int(math.sqrt(n))
        while s * s < n:
            s += 1
        while s > 0 and (s - 1) * (s - 1) >= n:
            s -= 1
        return s
    side = ceil_sqrt(torch.tensor(n)).item()
    torch._check(side >= 0)
    torch._check(side * side >= n)
    return side


def _gather_with_leading(
    grid: torch.Tensor, lead: torch.Tensor, k: torch.Tensor, row: torch.Tensor, col: torch.Tensor,
    on_map: torch.Tensor,
) -> torch.Tensor:
    """PPEG's output without ``keep_outside``: the cells and the leading tokens in one tensor, one gather, one
    mask. Every (B, L, D) tensor of it has the sequence's n_leading + S*S rows, so onnxruntime's arena reuses
    their buffers; gathering the S*S map rows and concatenating the leading ones in front left buffers of two
    sizes (peak RSS 4.12x instead of 3.54x a 100,000 x 1024 bag through an exported TransMIL).

    Args:
        grid: (B, S, S, D) convolved cells; lead: (B, n_leading, D).
        k, row, col, on_map: (B or 1, n_leading + K) each token's map index (negative for leading tokens), its
            cell (0 off the map) and whether it is on its bag's map, as :meth:`PPEG._forward_padded` computes them.

    Returns:
        (B, n_leading + K, D): the leading tokens, then each map token from its cell, zero past each bag's map.
    """
    B, S, D = grid.shape[0], grid.shape[1], grid.shape[3]
    cells = torch.cat([grid.reshape(B, S * S, D), lead], dim=1)  # cells first, then the leading tokens
    leading = k < 0
    # leading token k sits at row S*S + n_leading + k; tokens outside the map read cell 0, zeroed below
    cell = torch.where(leading, S * S + lead.shape[1] + k, row * S + col)
    Y = cells[torch.arange(B, device=grid.device).reshape(B, 1), cell]
    return Y * (on_map | leading).unsqueeze(-1).to(grid.dtype)


class PPEG(torch.nn.Module):
    r"""Pyramid Position Encoding Generator: depthwise convolutions over each bag's square token map.

    .. math:: \mathrm{PPEG}(T) = T + \mathrm{DW}_7(T) + \mathrm{DW}_5(T) + \mathrm{DW}_3(T)

    where :math:`T` is a bag's tokens laid out row by row on its :math:`s_b \times s_b` map and
    :math:`\mathrm{DW}_k` is a depthwise :math:`k \times k` convolution with zero padding ("same" size).

    Bags of one batch may have different sides :math:`s_b`. Each bag's map sits at the top-left of a shared
    :math:`S \times S` grid, :math:`S = \lceil\sqrt{K}\rceil`, all other cells zero; a zero-padded convolution
    restricted to the block equals the convolution of the block alone, so a bag's output does not depend on
    the other bags or on padding. The three convolutions run as one 7 x 7 depthwise convolution whose kernel
    is the sum of the three (centred) kernels plus the identity; the parameters stay the three convolutions.

    Args:
        dim: token size D.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.proj7 = torch.nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.proj5 = torch.nn.Conv2d(dim, dim, 5, 1, 2, groups=dim)
        self.proj3 = torch.nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def fused_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (D, 1, 7, 7) depthwise kernel and (D,) bias equal to identity + conv7 + conv5 + conv3."""
        weight = self.proj7.weight
        identity = F.pad(torch.ones_like(weight[:, :, :1, :1]), (3, 3, 3, 3))
        weight = weight + F.pad(self.proj5.weight, (1, 1, 1, 1)) + F.pad(self.proj3.weight, (2, 2, 2, 2))
        weight = weight + identity
        b7, b5, b3 = self.proj7.bias, self.proj5.bias, self.proj3.bias
        assert b7 is not None and b5 is not None and b3 is not None  # refines Optional for TorchScript
        return weight, b7 + b5 + b3

    def forward(
        self, x: torch.Tensor, H: torch.Tensor | None = None, W: int | None = None
    ) -> torch.Tensor:
        """Add the position encoding to each bag's token map.

        Two call forms:

        - ``ppeg(x, H, W)`` (torchmil's): ``x`` (B, H*W + 1, D) is a class token followed by an H x W map read
          row by row; returns (B, H*W + 1, D), the class token unchanged.
        - ``ppeg(x)`` / ``ppeg(x, side)`` (padded batches, what TransMIL uses): ``x`` (B, K, D) holds map tokens
          only; token k < s_b**2 of bag b is cell (k // s_b, k % s_b) of its square map; ``side`` (B,) integer
          gives s_b (0 = no map), s_b <= ceil(sqrt(K)); None = every bag uses ceil(sqrt(K)) (cells past token
          K-1 are empty, i.e. zero). Returns (B, K, D); tokens k >= side_b**2 (padding) come back unchanged.

        Args:
            x: the tokens, see above.
            H: the map height (with ``W``), or the (B,) per-bag sides (without ``W``).
            W: the map width; given, selects torchmil's form.
        """
        if W is not None:
            assert H is not None, "PPEG(x, H, W): H is required with W"
            return self._forward_map(x, int(H), W)
        return self._forward_padded(x, H)

    def _forward_map(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, D = x.shape[0], x.shape[2]
        if x.shape[1] != H * W + 1:
            raise ValueError(f"PPEG: expected H*W + 1 = {H * W + 1} tokens (class token first), got {x.shape[1]}")
        grid = x[:, 1:].transpose(1, 2).reshape(B, D, H, W)
        weight, bias = self.fused_kernel()
        grid = F.conv2d(grid, weight, bias, padding=3, groups=self.dim)
        return torch.cat([x[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)

    def forward_after(
        self, X: torch.Tensor, side: torch.Tensor | None, n_leading: int = 1, keep_outside: bool = True
    ) -> torch.Tensor:
        """``ppeg(x, side)`` on the tokens after the first ``n_leading`` (class tokens), which pass through.

        Equal to ``cat([X[:, :n_leading], ppeg(X[:, n_leading:], side)], dim=1)`` without the two copies of the
        sequence that the slice and the concatenation are in an exported graph.

        Args:
            X: (B, n_leading + K, D); side: (B,) integer s_b, or None (see :meth:`forward`).
            n_leading: tokens in front of the map tokens.
            keep_outside: map tokens past each bag's map (k >= s_b**2, padding) come back unchanged; False =
                they come back zero, and X is not read after the map is laid out (an exported graph frees it
                before the convolution: one (B, n_leading + K, D) sequence less at the peak), for callers that
                mask those tokens out of everything after (TransMIL).

        Returns:
            (B, n_leading + K, D).
        """
        return self._forward_padded(X, side, n_leading, keep_outside)

    def _forward_padded(
        self, X: torch.Tensor, side: torch.Tensor | None, n_leading: int = 0, keep_outside: bool = True
    ) -> torch.Tensor:
        B, K = X.shape[0], X.shape[1] - n_leading
        lead = X[:, :0]
        X_map = X
        offset = n_leading  # where map token 0 sits in X_map
        if not keep_outside and n_leading > 0:
            # one Split: both parts exist once it has run, so X is not held until the leading tokens are read
            lead, X_map = torch.split(X, [n_leading, K], dim=1)
            offset = 0
        S = grid_side(K)
        device = X.device
        if side is None:
            side_b = torch.full((B, 1), S, dtype=torch.long, device=device)
        else:
            side_b = side.to(device=device, dtype=torch.long).reshape(B, 1)
        side_1 = side_b.clamp_min(1)
        batch = torch.arange(B, device=device)

        # Scatter-free layout: grid cell (r, c) of bag b reads map token r * s_b + c when r, c < s_b, else zero.
        r = torch.arange(S, device=device)
        rows = r.reshape(1, S, 1)
        cols = r.reshape(1, 1, S)
        sb = side_b.reshape(B, 1, 1)
        token = rows * sb + cols  # (B, S, S)
        in_map = (rows < sb) & (cols < sb) & (token < K)
        token = torch.where(in_map, token + offset, torch.zeros_like(token))
        grid = X_map[batch.reshape(B, 1, 1), token] * in_map.unsqueeze(-1).to(X.dtype)  # (B, S, S, D)

        weight, bias = self.fused_kernel()
        grid = F.conv2d(grid.permute(0, 3, 1, 2), weight, bias, padding=3, groups=self.dim)
        grid = grid.permute(0, 2, 3, 1)  # (B, S, S, D)

        # Gather each map token back from its cell; leading tokens (and, with keep_outside, tokens outside the
        # map) keep their value.
        k = torch.arange(n_leading + K, device=device).reshape(1, n_leading + K) - n_leading
        row = torch.div(k, side_1, rounding_mode="floor")
        col = k - row * side_1
        on_map = (k >= 0) & (k < side_b * side_b)
        row = torch.where(on_map, row, torch.zeros_like(row))
        col = torch.where(on_map, col, torch.zeros_like(col))
        if not keep_outside:
            return _gather_with_leading(grid, lead, k, row, col, on_map)
        Y = grid[batch.reshape(B, 1), row, col]  # (B, n_leading + K, D)
        return torch.where(on_map.unsqueeze(-1), Y, X)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
