r"""Dense per-bag grids built from instance coordinates, batched with padding (torchmil's ``seq_to_spatial``
per bag, with masks).

A bag's grid is the :math:`S_b \times S_b` square of cells :math:`(0, 0) \ldots (S_b - 1, S_b - 1)`, with
:math:`S_b = 1 + \max` of its real instances' two coordinates (the origin stays at 0, as in the reference:
coordinates are indices). A batch stores each bag's cells in a common buffer of :math:`S_{max}^2` rows, either
in the bag's own row-major layout (cell (r, c) at row :math:`r S_b + c`) or in the batch's (:math:`r S_{max} +
c`, a map that convolution-like ops read). Padded instances create no cells. Cost: :math:`B\,S_{max}^2\,E`
floats, whatever the number of instances (a sparse bag far from the origin has a large grid).
"""

from __future__ import annotations

import torch

from milsdk.nn.adjacency import scatter_add_rows

__all__ = ["grid_sides", "cells_to_grid", "torchmil_grid_tokens"]


def grid_sides(cells: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Side of each bag's square grid: 1 + the largest coordinate of its real instances (1 for a bag without any).

    Args:
        cells: (B, N, 2) long, >= 0 on real instances; keep: (B, N) bool.

    Returns:
        (B,) long, >= 1.
    """
    top = torch.where(keep.unsqueeze(-1), cells, torch.full_like(cells, -1)).amax(dim=1)  # (B, 2)
    return (top.amax(dim=1) + 1).clamp_min(1)


def cells_to_grid(
    H: torch.Tensor, keep: torch.Tensor, cells: torch.Tensor, width: torch.Tensor, n_cells: int
) -> torch.Tensor:
    """Scatter each bag's real instances into its grid buffer; empty cells are 0.

    Several instances in one cell are averaged (the reference keeps one of them, which one is unspecified).

    Args:
        H: (B, N, E) instance features; keep: (B, N) bool; cells: (B, N, 2) long, >= 0 on real instances.
        width: (B,) long row width of each bag's layout (its own side, or the batch's).
        n_cells: rows of the buffer (>= every bag's last cell + 1).

    Returns:
        (B, n_cells, E).
    """
    B, N, E = H.shape[0], H.shape[1], H.shape[2]
    slot = cells[..., 0] * width.unsqueeze(1) + cells[..., 1]
    bag = torch.arange(B, device=H.device).unsqueeze(1)
    dump = B * n_cells  # padded instances go to one extra row, dropped
    rows = torch.where(keep, bag * n_cells + slot, torch.full_like(slot, dump)).reshape(B * N)
    total = scatter_add_rows(H.reshape(B * N, E), rows, dump + 1)[:dump]
    count = scatter_add_rows(torch.ones_like(H[..., 0]).reshape(B * N), rows, dump + 1)[:dump]
    return (total / count.clamp_min(1).unsqueeze(-1)).reshape(B, n_cells, E)


def torchmil_grid_tokens(grid: torch.Tensor, sides: torch.Tensor) -> torch.Tensor:
    r"""torchmil SETMIL's tokens without PMF: its (E, S, S) map reshaped straight to (S^2, E), per bag.

    Token t takes the E consecutive entries t E ... t E + E - 1 of the channel-major map, i.e. feature j of
    token t is channel :math:`\lfloor m / S^2 \rfloor` of cell :math:`m \bmod S^2`, :math:`m = tE + j` (the
    reference's reshape mixes cells and channels; reproduced, not fixed).

    Args:
        grid: (B, G, E) cells in each bag's own layout (:func:`cells_to_grid` with ``width = sides``),
            G >= every S_b^2.
        sides: (B,) long S_b.

    Returns:
        (B, G, E): bag b's first S_b^2 tokens; rows past them are meaningless.
    """
    B, G, E = grid.shape[0], grid.shape[1], grid.shape[2]
    area = (sides * sides).reshape(B, 1, 1)
    m = torch.arange(G, device=grid.device).reshape(1, G, 1) * E + torch.arange(E, device=grid.device).reshape(1, 1, E)
    channel = torch.div(m, area, rounding_mode="floor")
    cell = m - channel * area
    index = (cell * E + channel).clamp(max=G * E - 1)  # rows past S_b^2 would reach past the buffer
    return grid.reshape(B, G * E).gather(1, index.reshape(B, G * E)).reshape(B, G, E)
