r"""torchmil SETMIL's tokens-to-token layer and pyramid (Zhao et al., MICCAI 2022, after Yuan et al., ICCV 2021):
unfold a (B, C, h, w) map into patches, then one transformer layer over every patch, empty or not.

This is the other of torchmil's two ``T2TLayer``\ s: ``torchmil.models.setmil.T2TLayer`` (unfold, then
transformer), not ``torchmil.nn.transformers.T2TLayer`` (transformer, then unfold; milsdk's
:class:`milsdk.nn.transformers.T2TLayer`). Batches hold maps of different sizes: ``sizes`` gives each map's
own (h_b, w_b) in the top-left corner of the batch's map (the rest zero); each bag's patches are then the
first L_b tokens of the output, in its own row-major order, and its outputs equal the map alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from milsdk.nn.bag_grid import cells_to_grid, grid_sides
from milsdk.nn.transformers.irpe_transformer import iRPETransformerLayer

__all__ = ["GridPMF", "T2TLayer", "patch_grid"]


def patch_grid(
    sizes: torch.Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> torch.Tensor:
    """Patch grid (L_h, L_w) that ``nn.Unfold`` gives on maps of the given sizes.

    Args:
        sizes: (..., 2) long (h, w).
        kernel, stride, padding, dilation: of the unfold.

    Returns:
        (..., 2) long, >= 0.
    """
    span_h = sizes[..., 0] + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1
    span_w = sizes[..., 1] + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1
    out_h = torch.div(span_h, stride[0], rounding_mode="floor") + 1
    out_w = torch.div(span_w, stride[1], rounding_mode="floor") + 1
    return torch.stack([out_h, out_w], dim=-1).clamp_min(0)


def _pair(value: Sequence[int] | int, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"T2TLayer: {name} must be an int or a pair, got {value!r}")
    return pair  # type: ignore[return-value]


class T2TLayer(torch.nn.Module):
    r"""Unfold, then a transformer layer over the patches (torchmil's ``models.setmil.T2TLayer``).

    .. math::
        P = \operatorname{Unfold}_{k, \text{stride}, \text{pad}, \text{dil}}(X)^\top \in
            \mathbb{R}^{L \times C k_h k_w},\qquad Y = W_\text{out}\,\operatorname{TransformerLayer}(P)

    :math:`L = L_h L_w`, :math:`L_h = \lfloor (h + 2 p_h - d_h (k_h - 1) - 1) / s_h \rfloor + 1` (likewise
    :math:`L_w`); the transformer layer is pre-norm multi-head self-attention and an MLP, from C k_h k_w to
    att_dim, over all L patches (an empty cell is a zero patch, attended like any other). Memory: the patches,
    :math:`B L C k_h k_w` floats, and query-chunked attention (no L x L tensor).

    Args:
        in_dim: channels C of the map.
        out_dim: output size; None or att_dim = no projection. (torchmil documents None as
            ``att_dim * kh * kw`` but then builds ``Linear(att_dim, None)``, which raises; here it means att_dim.)
        att_dim: width of the transformer layer.
        kernel_size, stride, padding, dilation: of the unfold.
        n_heads: attention heads.
        use_mlp: MLP sub-block in the transformer layer.
        dropout: dropout of the transformer layer.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int | None = None,
        att_dim: int = 512,
        kernel_size: Sequence[int] = (3, 3),
        stride: Sequence[int] = (1, 1),
        padding: Sequence[int] = (2, 2),
        dilation: Sequence[int] = (1, 1),
        n_heads: int = 4,
        use_mlp: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.kernel = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        if min(self.kernel) < 1 or min(self.stride) < 1 or min(self.dilation) < 1 or min(self.padding) < 0:
            raise ValueError(
                f"T2TLayer: kernel_size, stride and dilation must be >= 1 and padding >= 0, got {self.kernel}, "
                f"{self.stride}, {self.dilation}, {self.padding}"
            )
        self.in_dim, self.att_dim = in_dim, att_dim
        self.out_dim = att_dim if out_dim is None else out_dim
        self.unfold = torch.nn.Unfold(
            kernel_size=self.kernel, stride=self.stride, padding=self.padding, dilation=self.dilation
        )
        self.transf_layer = iRPETransformerLayer(
            in_dim * self.kernel[0] * self.kernel[1], att_dim, att_dim=att_dim, n_heads=n_heads,
            use_mlp=use_mlp, dropout=dropout, rpe_mode=None, rpe_skip=0,
        )
        self.out_proj = torch.nn.Linear(att_dim, self.out_dim) if self.out_dim != att_dim else torch.nn.Identity()

    def output_sizes(self, sizes: torch.Tensor) -> torch.Tensor:
        """Patch grid (L_h, L_w) of maps of the given sizes.

        Args:
            sizes: (..., 2) long (h, w).

        Returns:
            (..., 2) long, >= 0.
        """
        return patch_grid(sizes, self.kernel, self.stride, self.padding, self.dilation)

    def forward(self, X: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
        """Patches of the map, each through the transformer layer.

        Args:
            X: (B, in_dim, h, w) map.
            sizes: (B, 2) long, each bag's own map (h_b, w_b) at the top-left of X, the rest of X zero; None =
                every bag is the whole map.

        Returns:
            (B, L, out_dim): bag b's L_b = L_h L_w patches first, row-major in its own patch grid (see
            :meth:`output_sizes`), then meaningless rows.
        """
        B = X.shape[0]
        patches = self.unfold(X).transpose(1, 2)  # (B, Lh * Lw, C kh kw) over the batch's map
        L = patches.shape[1]
        if sizes is None:
            keep = torch.ones(B, L, dtype=torch.bool, device=X.device)
        else:
            full = self.output_sizes(torch.tensor([X.shape[2], X.shape[3]], device=X.device))
            own = self.output_sizes(sizes.to(X.device))  # (B, 2)
            index = torch.arange(L, device=X.device).unsqueeze(0)
            width = own[:, 1:].clamp_min(1)
            rows = torch.div(index, width, rounding_mode="floor")
            source = (rows * full[1] + index - rows * width).clamp(max=L - 1)
            keep = index < own[:, :1] * own[:, 1:]
            flat = (torch.arange(B, device=X.device).unsqueeze(1) * L + source).reshape(B * L)
            patches = patches.reshape(B * L, patches.shape[2]).index_select(0, flat).reshape(B, L, -1)
        pos = torch.zeros(B, L, 2, dtype=torch.long, device=X.device)  # unused: no position encoding
        Y, _ = self.transf_layer.forward_pos(patches, keep, pos)
        return self.out_proj(Y)


class GridPMF(torch.nn.Module):
    r"""torchmil's pyramid multi-scale fusion over a dense map: :class:`T2TLayer` branches, concatenated.

    .. math::
        \operatorname{PMF}(X) = W\,\big[\operatorname{T2T}_{k_1}(X) \,\|\, \operatorname{T2T}_{k_2}(X) \,\|\,
        \dots\big]

    (W only when ``out_dim`` is given). Every branch must give the same number of patches (the reference
    concatenates them token by token); that is checked for maps up to 256 x 256 at construction.

    Args:
        in_dim: channels of the map.
        out_dim: output size (None: att_dim times the number of branches).
        att_dim: width of each branch.
        kernel_list, stride_list, padding_list, dilation_list: one (h, w) pair per branch.
        n_heads, use_mlp, dropout: each branch's transformer layer.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int | None = None,
        att_dim: int = 512,
        kernel_list: Sequence[Sequence[int]] = ((3, 3), (5, 5), (7, 7)),
        stride_list: Sequence[Sequence[int]] = ((1, 1), (1, 1), (1, 1)),
        padding_list: Sequence[Sequence[int]] = ((1, 1), (2, 2), (3, 3)),
        dilation_list: Sequence[Sequence[int]] = ((1, 1), (1, 1), (1, 1)),
        n_heads: int = 4,
        use_mlp: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        lists = (list(kernel_list), list(stride_list), list(padding_list), list(dilation_list))
        if not lists[0] or len({len(v) for v in lists}) != 1:
            raise ValueError(
                "PMF: kernel_list, stride_list, padding_list and dilation_list need one entry per branch "
                f"(got {', '.join(str(len(v)) for v in lists)})"
            )
        self.layers = torch.nn.ModuleList(
            T2TLayer(in_dim, att_dim, att_dim, k, s, p, d, n_heads=n_heads, use_mlp=use_mlp, dropout=dropout)
            for k, s, p, d in zip(*lists)
        )
        probe = torch.arange(1, 257).unsqueeze(1).expand(256, 2)
        counts = [layer.output_sizes(probe).prod(dim=1) for layer in self.layers]
        if any(not torch.equal(c, counts[0]) for c in counts):
            raise ValueError("PMF: the branches give different numbers of patches (torchmil concatenates them "
                             "patch by patch): use kernels, strides, paddings and dilations that agree")
        #: patch i is cell i of every map (stride 1, "same" padding): outputs map back to the cells
        self.keeps_grid = bool(torch.equal(counts[0], probe.prod(dim=1)))
        fused = att_dim * len(self.layers)
        self.out_proj = torch.nn.Linear(fused, out_dim) if out_dim is not None else torch.nn.Identity()
        first = self.layers[0]
        #: the unfold of the first branch (every branch gives as many patches): what :meth:`n_tokens` needs
        self.geometry = (first.kernel, first.stride, first.padding, first.dilation)

    def n_tokens(self, sizes: torch.Tensor) -> torch.Tensor:
        """Patches of maps of the given sizes: (..., 2) long (h, w) -> (...) long."""
        g = self.geometry
        return patch_grid(sizes, g[0], g[1], g[2], g[3]).prod(dim=-1)

    def forward_map(self, X: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
        """Fuse the branches over a map.

        Args:
            X: (B, in_dim, h, w) map; sizes: (B, 2) each bag's own map (see :meth:`T2TLayer.forward`).

        Returns:
            (B, L, out_dim), each bag's first :meth:`n_tokens` rows real.
        """
        outs = [layer(X, sizes) for layer in self.layers]
        return self.out_proj(torch.cat(outs, dim=-1))

    def forward(self, X: torch.Tensor, keep: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """Fuse the branches over each bag's dense grid (:mod:`milsdk.nn.bag_grid`).

        Args:
            X: (B, N, in_dim) instances; keep: (B, N) bool; cells: (B, N, 2) long, >= 0 on real instances.

        Returns:
            (B, L, out_dim): bag b's first ``n_tokens((S_b, S_b))`` rows real, S_b its grid's side.
        """
        B, E = X.shape[0], X.shape[2]
        sides = grid_sides(cells, keep)
        top = int(sides.max())
        # one (top, top) map for the batch, each bag's own square in its top-left corner
        grid = cells_to_grid(X, keep, cells, torch.full_like(sides, top), top * top)
        image = grid.transpose(1, 2).reshape(B, E, top, top)
        return self.forward_map(image, torch.stack([sides, sides], dim=1))
