"""SETMIL: spatial encoding transformer-based MIL (Zhao et al., MICCAI 2022, "SETMIL: Spatial Encoding
Transformer-Based Multiple Instance Learning for Pathological Image Analysis"), padding-invariant and exportable.

Instance encoder (``feat_ext``, projection to att_dim) -> optional pyramid multi-scale fusion (PMF: tokens-to-token
over each instance's grid neighbourhood at several kernel sizes) -> class token + sinusoidal position encoding ->
spatial encoding transformer (iRPE self-attention over the instances' grid offsets) -> classifier on the class
token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from milsdk.errors import ModelConfigError
from milsdk.models.mil_model import MILModel
from milsdk.models.registry import register_model
from milsdk.nn.adjacency import scatter_add_rows
from milsdk.nn.bag_grid import cells_to_grid, grid_sides, torchmil_grid_tokens
from milsdk.nn.linear import LazyLinear
from milsdk.nn.masked import as_bool_mask
from milsdk.nn.positional_encoding import SinusoidalPositionalEncodingND
from milsdk.nn.transformers.grid_t2t import GridPMF, T2TLayer, patch_grid
from milsdk.nn.transformers.irpe_transformer import iRPETransformerEncoder, iRPETransformerLayer

__all__ = ["PMF", "SETMIL", "T2TLayer"]

GRIDS = ("occupied_cells", "all_cells")
ONNX_REFUSAL = (
    "grid='all_cells' cannot be exported to ONNX: the grid's size depends on the coords' values (torch.export: "
    "GuardOnDataDependentSymNode); export it to TorchScript (formats=('torchscript',), --format torchscript)"
)


@torch.jit.unused
def _exporting() -> bool:
    """True while torch.export / the dynamo ONNX exporter traces the model (never called by TorchScript)."""
    return bool(torch.compiler.is_exporting())


def _pairs(values: Sequence[Sequence[int]], name: str) -> list[tuple[int, int]]:
    pairs = [tuple(int(v) for v in value) for value in values]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"PMF: every entry of {name} must be a pair, got {values!r}")
    return pairs  # type: ignore[return-value]


def shift_to_origin(cells: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Move each bag's grid cells so that its real instances start at (0, 0); padded entries become (0, 0).

    Args:
        cells: (B, N, 2) long grid cells; keep: (B, N) bool.

    Returns:
        (B, N, 2) long, >= 0 on real instances.
    """
    real = keep.unsqueeze(-1)
    far = 4611686018427387904  # 2**62, above any grid coordinate (a literal: TorchScript has no globals)
    lo = torch.where(real, cells, torch.full_like(cells, far)).amin(dim=1, keepdim=True)
    lo = torch.where(lo == far, torch.zeros_like(lo), lo)  # a bag without real instances
    return (cells - lo) * real.to(cells.dtype)


def _sort(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.sort(values, dim=0)


def neighbourhoods(
    X: torch.Tensor,
    keep: torch.Tensor,
    cells: torch.Tensor,
    kernels: list[tuple[int, int]],
    dilations: list[tuple[int, int]],
    margin_r: int,
    margin_c: int,
) -> list[torch.Tensor]:
    r"""For each instance and each kernel, the features of the grid cells of its k_h x k_w window (what
    ``nn.Unfold`` with "same" padding gives at the instance's cell), without building the grid.

    A cell holding several instances has their mean; an empty cell is 0. The lookup sorts the cells' integer
    keys and finds every window cell by a merge with the sorted keys (sort + cumulative sum), so memory and
    time grow as N k^2 (log N), whatever the grid's extent, and the ops export to ONNX.

    Args:
        X: (B, N, E) instance features; keep: (B, N) bool; cells: (B, N, 2) long, >= 0 on real instances.
        kernels: odd (k_h, k_w) per branch; dilations: (d_h, d_w) per branch.
        margin_r, margin_c: the largest half-window (rows, columns) over the branches.

    Returns:
        One (B, N, E * k_h * k_w) tensor per kernel, channel-major like ``nn.Unfold`` (E, k_h, k_w).
    """
    B, N, E = X.shape[0], X.shape[1], X.shape[2]
    T = B * N
    device = X.device
    real = keep.reshape(T)
    r = cells[..., 0].reshape(T)
    c = cells[..., 1].reshape(T)
    zero = torch.zeros_like(r)
    width = torch.where(real, c, zero).amax(dim=0) + 2 * margin_c + 1  # no window wraps to the next row
    height = torch.where(real, r, zero).amax(dim=0) + 2 * margin_r + 1  # ... nor to the next bag
    bag = torch.arange(B, device=device).unsqueeze(1).expand(B, N).reshape(T)
    flat = torch.arange(T, device=device)
    key = bag * (height * width) + (r + margin_r) * width + (c + margin_c)
    beyond = B * height * width  # padded instances: unique keys past every bag
    key = torch.where(real, key, beyond + flat)

    # Cells: sorted unique keys, each with the mean of its instances.
    sorted_key, order = _sort(key)
    first = torch.ones(1, dtype=torch.bool, device=device)
    new_cell = torch.cat([first, sorted_key[1:] != sorted_key[:-1]])
    seg_sorted = new_cell.to(torch.long).cumsum(0) - 1
    seg = torch.zeros_like(seg_sorted).scatter(0, order, seg_sorted)
    x_flat = X.reshape(T, E)
    cell_sum = scatter_add_rows(x_flat, seg, T)
    count = scatter_add_rows(torch.ones_like(x_flat[:, 0]), seg, T)
    cell_mean = cell_sum / count.clamp_min(1).unsqueeze(-1)
    # unused slots get keys above every real one, in increasing order, so cell_key stays sorted
    cell_key = (beyond + T + flat).scatter(0, seg_sorted, sorted_key)

    outs: list[torch.Tensor] = []
    for i in range(len(kernels)):
        kh, kw = kernels[i]
        dh, dw = dilations[i]
        dr = torch.arange(kh, device=device) * dh - (kh - 1) // 2 * dh
        dc = torch.arange(kw, device=device) * dw - (kw - 1) // 2 * dw
        offsets = (dr.unsqueeze(1) * width + dc.unsqueeze(0)).reshape(1, kh * kw)
        query = (key.unsqueeze(1) + offsets).reshape(-1)  # (T * kh * kw,)
        # merge: parity 0 = cell, 1 = query, so a cell sorts before a query of the same key
        merged = torch.cat([cell_key * 2, query * 2 + 1])
        _, merged_order = _sort(merged)
        cells_before = (merged_order < T).to(torch.long).cumsum(0)
        rank = torch.zeros_like(merged_order).scatter(
            0, merged_order, torch.arange(merged_order.shape[0], device=device)
        )
        slot = cells_before.gather(0, rank[T:]) - 1  # the last cell with key <= query
        slot = slot.clamp_min(0)
        found = cell_key.gather(0, slot) == query
        window = cell_mean.index_select(0, slot) * found.unsqueeze(-1).to(X.dtype)
        outs.append(window.reshape(B, N, kh * kw, E).transpose(2, 3).reshape(B, N, E * kh * kw))
    return outs


class PMF(torch.nn.Module):
    r"""Pyramid multi-scale fusion (Zhao et al., MICCAI 2022): tokens-to-token at several kernel sizes, fused.

    .. math::
        \operatorname{PMF}(X) = W\,\big[\operatorname{T2T}_{k_1}(X) \,\|\, \operatorname{T2T}_{k_2}(X) \,\|\,
        \dots\big],\qquad
        \operatorname{T2T}_k(X)_i = \operatorname{TransformerLayer}\big(\operatorname{Unfold}_k(X)\big)_i

    where :math:`\operatorname{Unfold}_k(X)_i` concatenates the features of the :math:`k_h \times k_w` grid
    cells around instance i (see :func:`neighbourhoods`). Deviation from the reference: it unfolds the dense
    grid and makes every cell, empty or not, a token; here only the instances are tokens (each keeps its own
    output, the transformer attends over each bag's real instances), so the module is padding-invariant and
    its memory does not depend on the grid's extent. Hence each branch must keep the grid ("same"
    unfolding): stride (1, 1), odd kernels, padding = dilation * (k - 1) / 2 (the reference's defaults).

    Args:
        in_dim: instance feature size.
        out_dim: output size (None: the concatenation, att_dim * number of kernels).
        att_dim: width of each branch.
        kernel_list, stride_list, padding_list, dilation_list: one (h, w) pair per branch.
        n_heads: attention heads of each branch.
        use_mlp: MLP sub-block in each branch.
        dropout: dropout in each branch.
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
        kernels = _pairs(kernel_list, "kernel_list")
        strides = _pairs(stride_list, "stride_list")
        paddings = _pairs(padding_list, "padding_list")
        dilations = _pairs(dilation_list, "dilation_list")
        if not kernels or not len(kernels) == len(strides) == len(paddings) == len(dilations):
            raise ValueError(
                "PMF: kernel_list, stride_list, padding_list and dilation_list need one entry per branch "
                f"(got {len(kernels)}, {len(strides)}, {len(paddings)}, {len(dilations)})"
            )
        for k, s, p, d in zip(kernels, strides, paddings, dilations):
            same = tuple(di * (ki - 1) // 2 for ki, di in zip(k, d))
            if s != (1, 1) or k[0] % 2 == 0 or k[1] % 2 == 0 or p != same or min(d) < 1:
                raise ValueError(
                    f"PMF: branch kernel={k} stride={s} padding={p} dilation={d} does not keep the grid; each "
                    "PMF token is one instance, so use stride (1, 1), odd kernels and padding = "
                    f"dilation * (kernel - 1) / 2 (here {same})"
                )
        self.kernels, self.dilations = kernels, dilations
        self.margin_r = max((k[0] - 1) // 2 * d[0] for k, d in zip(kernels, dilations))
        self.margin_c = max((k[1] - 1) // 2 * d[1] for k, d in zip(kernels, dilations))
        self.layers = torch.nn.ModuleList(
            iRPETransformerLayer(
                in_dim * k[0] * k[1], att_dim, att_dim=att_dim, n_heads=n_heads, use_mlp=use_mlp,
                dropout=dropout, rpe_mode=None, rpe_skip=0,
            )
            for k in kernels
        )
        fused = att_dim * len(kernels)
        self.out_proj = torch.nn.Linear(fused, out_dim) if out_dim is not None else torch.nn.Identity()

    def forward(self, X: torch.Tensor, keep: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """Fuse each instance's multi-scale neighbourhood.

        Args:
            X: (B, N, in_dim) instance features; keep: (B, N) bool, True = real instance;
            cells: (B, N, 2) long grid cells, >= 0 on real instances.

        Returns:
            (B, N, out_dim); padded positions are finite and meaningless.
        """
        windows = neighbourhoods(X, keep, cells, self.kernels, self.dilations, self.margin_r, self.margin_c)
        pos = torch.zeros_like(cells)  # unused: the branches have no position encoding
        outs: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            Y, _ = layer.forward_pos(windows[i], keep, pos)
            outs.append(Y)
        return self.out_proj(torch.cat(outs, dim=-1))


@register_model
class SETMIL(MILModel):
    r"""SETMIL with per-bag masking and grid coordinates.

    For a bag with instances :math:`h_i = P\,\text{feat\_ext}(x_i)` at grid cells :math:`c_i`
    (``floor(coords)``):

    1. optionally :math:`h \leftarrow \operatorname{PMF}(h)` (:class:`PMF`);
    2. tokens :math:`[t_\text{cls} + e(0),\ h_i + e(1 + u_i S + v_i)]` with :math:`(u_i, v_i) = c_i -
       \min_{j\ \text{real}} c_j` (the bag moved to the origin), :math:`S = 1 + \max_i \max(u_i, v_i)` the
       side of the bag's own square and :math:`e` the 1-D sinusoidal encoding of that flattened cell index
       (the reference's positions, made per bag);
    3. the spatial encoding transformer (``set_n_layers`` iRPE layers, relative positions :math:`c_i - c_j`,
       the class token in its own bucket), a LayerNorm, and a linear classifier on the class token.

    Deviations from the reference (torchmil 1.0.2), and why:

    - tokens are the bag's real instances only. The reference builds the dense grid over the batch's extent
      and makes every cell a token (empty ones included), so a bag's logits depend on the other bags'
      coordinates and the sequence grows with the grid's area, not with N; it also reshapes the (B, C, S, S)
      map straight to (B, S*S, C), mixing features across cells. Here relative positions come from the
      coordinates, padding is masked out of attention, and outputs are padding- and translation-invariant.
    - several instances in one cell are several tokens (the reference keeps one, arbitrarily).
    - with ``use_pmf=True`` the reference returns all-zero attention; PMF here keeps one token per instance,
      so the attention is the class token's attention over the instances in both cases.

    Attention (``return_att``): the last layer's class-token attention over the real instances, averaged over
    heads (one query row, O(N)); 0 on padding, non-negative, not renormalised (``attention_output =
    "weights"``). Memory is linear in N (query-chunked attention, also in the exported graph). Deterministic
    in eval mode (nothing is sampled).

    ``grid="all_cells"`` computes torchmil's function instead (what :func:`milsdk.models.from_torchmil` sets),
    per bag: the dense :math:`S \times S` grid of the bag's cells, :math:`S = 1 + \max` of its real
    instances' coordinates (origin 0: coordinates are cell indices, >= 0; padded instances create no cells,
    several instances in one cell are averaged where torchmil keeps one); without PMF the reference's
    reshape of the (E, S, S) map to S^2 tokens (:func:`milsdk.nn.bag_grid.torchmil_grid_tokens`), with PMF
    :class:`~milsdk.nn.transformers.grid_t2t.GridPMF` (unfold every cell, then a transformer over all
    patches); then the class token, the 1-D encoding of the token index, and the transformer in the
    reference's sequence layout (``layout="torchmil"`` of
    :class:`~milsdk.nn.attention.iRPEMultiheadSelfAttention`). Attention: the class-token row (mean over
    heads) at each instance's cell, the reference's without PMF. With PMF the reference returns zeros ("cannot
    be computed"); here, when the pyramid keeps the grid (stride 1, padding = dilation (k - 1) / 2: patch i is
    cell i), the same row at each instance's cell, so that the weights are a distribution and the export
    verifies; zeros (the reference's) for any other pyramid, whose export then fails the verifier's
    attention checks. A batch pads each bag's grid to the
    largest and masks the rest, so a bag's outputs equal its own alone. Cost: :math:`S^2` tokens per bag
    (the grid's area, not N: a bag of 5,000 instances on a 71 x 71 grid has 5,041 tokens, one far from the
    origin many more), :math:`B S^2 E` floats per layer (times k^2 for a PMF branch) and query-chunked
    attention (:math:`O(S^4)` time). Eager and TorchScript only: the grid's size depends on the coordinates'
    values, so ONNX export is refused with a ModelConfigError.

    Args:
        in_shape: shape of one instance, e.g. (1024,).
        att_dim: token width of the PMF and the transformer.
        use_pmf: apply PMF before the transformer.
        pmf_n_heads, pmf_use_mlp, pmf_dropout: PMF branches' transformer layers.
        pmf_kernel_list, pmf_stride_list, pmf_padding_list, pmf_dilation_list: one (h, w) pair per PMF branch.
        set_n_layers, set_n_heads, set_use_mlp, set_dropout: the spatial encoding transformer.
        rpe_ratio, rpe_method, rpe_mode, rpe_shared_head, rpe_skip, rpe_on: its iRPE (see
            :class:`~milsdk.nn.attention.iRPEMultiheadSelfAttention`).
        feat_ext: instance feature extractor applied to X (default identity).
        criterion: loss (default BCEWithLogitsLoss for one output, CrossEntropyLoss for n_classes > 1).
        n_classes: number of outputs (1 = binary, logits (B,); C > 1 = logits (B, C)).
        grid: "occupied_cells" (default: tokens are the instances) or "all_cells" (torchmil's dense grid, see
            above).
    """

    extra_inputs = ("coords",)
    attention_output = "weights"
    __jit_unused_properties__ = ["config", "in_shape", "n_outputs", "onnx_unsupported"]
    test_config = {"att_dim": 16, "set_n_heads": 2}

    def __init__(
        self,
        in_shape: Sequence[int],
        att_dim: int = 512,
        use_pmf: bool = False,
        pmf_n_heads: int = 4,
        pmf_use_mlp: bool = True,
        pmf_dropout: float = 0.0,
        pmf_kernel_list: Sequence[Sequence[int]] = ((3, 3), (5, 5), (7, 7)),
        pmf_stride_list: Sequence[Sequence[int]] = ((1, 1), (1, 1), (1, 1)),
        pmf_padding_list: Sequence[Sequence[int]] = ((1, 1), (2, 2), (3, 3)),
        pmf_dilation_list: Sequence[Sequence[int]] = ((1, 1), (1, 1), (1, 1)),
        set_n_layers: int = 1,
        set_n_heads: int = 4,
        set_use_mlp: bool = True,
        set_dropout: float = 0.0,
        rpe_ratio: float = 1.9,
        rpe_method: str = "product",
        rpe_mode: str | None = "contextual",
        rpe_shared_head: bool = True,
        rpe_skip: int = 1,
        rpe_on: str = "k",
        feat_ext: torch.nn.Module | None = None,
        criterion: torch.nn.Module | None = None,
        n_classes: int = 1,
        *,
        grid: str = "occupied_cells",
    ) -> None:
        super().__init__()
        if grid not in GRIDS:
            raise ModelConfigError(f"SETMIL: grid={grid!r}, expected one of {GRIDS}")
        self.grid = grid
        feat_dim = self.setup_head(feat_ext, in_shape, criterion, n_classes)
        self.att_dim = att_dim
        self.proj = LazyLinear(feat_dim, att_dim) if feat_dim != att_dim else torch.nn.Identity()
        self.pos_embed = SinusoidalPositionalEncodingND(1, att_dim)
        pmf_class = GridPMF if grid == "all_cells" else PMF
        self.pmf = (
            pmf_class(
                in_dim=att_dim,
                out_dim=att_dim,
                att_dim=att_dim,
                kernel_list=pmf_kernel_list,
                stride_list=pmf_stride_list,
                padding_list=pmf_padding_list,
                dilation_list=pmf_dilation_list,
                n_heads=pmf_n_heads,
                use_mlp=pmf_use_mlp,
                dropout=pmf_dropout,
            )
            if use_pmf
            else None
        )
        # grid="all_cells": attention at the instances' cells unless a pyramid's patches are not the cells
        self.att_on_cells = not isinstance(self.pmf, GridPMF) or self.pmf.keeps_grid
        # the token count of torchmil's pyramid (its first branch's unfold), read in grid="all_cells"
        self.pmf_geometry = (
            self.pmf.geometry if isinstance(self.pmf, GridPMF) else ((1, 1), (1, 1), (0, 0), (1, 1))
        )
        self.se_transf = iRPETransformerEncoder(
            in_dim=att_dim,
            att_dim=att_dim,
            n_heads=set_n_heads,
            n_layers=set_n_layers,
            use_mlp=set_use_mlp,
            dropout=set_dropout,
            rpe_ratio=rpe_ratio,
            rpe_method=rpe_method,
            rpe_mode=rpe_mode,
            rpe_shared_head=rpe_shared_head,
            rpe_skip=rpe_skip,
            rpe_on=rpe_on,
            layout="torchmil" if grid == "all_cells" else "positions",
        )
        self.cls_token = torch.nn.Parameter(torch.randn(1, 1, att_dim))
        self.classifier = torch.nn.Linear(att_dim, n_classes)

    def forward(
        self,
        X: torch.Tensor,
        mask: torch.Tensor | None = None,
        coords: torch.Tensor | None = None,
        return_att: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Bag logits.

        Args:
            X: (B, N, *in_shape) instance features.
            mask: (B, N) True / 1 = real instance (bool or uint8); None = all real.
            coords: (B, N, 2) grid coordinates of the instances (required; floats are floored, so patch
                indices, not pixel offsets, are expected).
            return_att: also return the class token's attention over the instances.

        Returns:
            logits (B,) for one output or (B, C); with ``return_att`` also attention (B, N): non-negative
            weights, 0 on padding (see the class docstring).

        Raises:
            ValueError: coords missing or not (B, N, 2).
        """
        if coords is None:
            raise ValueError("SETMIL needs coords (B, N, 2), the instances' grid coordinates")
        if coords.dim() != 3 or coords.shape[-1] != 2:
            raise ValueError("SETMIL: coords must be (B, N, 2) grid coordinates")
        H = self.proj(self.feat_ext(X))  # (B, N, E)
        B = H.shape[0]
        keep = as_bool_mask(mask, H)
        coords = coords.to(H.device)
        cells = torch.floor(coords).to(torch.long) if coords.is_floating_point() else coords.to(torch.long)
        if self.grid == "all_cells":
            return self._forward_all_cells(H, keep, cells, return_att)
        rel = shift_to_origin(cells, keep)
        if self.pmf is not None:
            H = self.pmf(H, keep, rel)

        side = rel.amax(dim=1).amax(dim=1, keepdim=True) + 1  # (B, 1) side of each bag's square
        flat = 1 + rel[..., 0] * side + rel[..., 1]  # (B, N) the reference's 1-D cell index, per bag
        pe = self.pos_embed.encode(flat.unsqueeze(-1)).to(H.dtype)
        cls_pe = self.pos_embed.encode(torch.zeros(1, 1, 1, device=H.device)).to(H.dtype)
        cls = (self.cls_token.to(H.dtype) + cls_pe).expand(B, 1, self.att_dim)
        tokens = torch.cat([cls, H + pe], dim=1)
        seq_keep = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=H.device), keep], dim=1)
        seq_pos = torch.cat([torch.zeros(B, 1, 2, dtype=torch.long, device=H.device), rel], dim=1)

        Y, att = self.se_transf.forward_pos(tokens, seq_keep, seq_pos)
        logits = self.squeeze_binary(self.classifier(Y[:, 0]))
        if return_att:
            instance_att = att.mean(dim=1)[:, 1:] * keep.to(att.dtype)
            return logits, instance_att.to(logits.dtype)
        return logits

    @property
    def onnx_unsupported(self) -> str | None:
        """Why this config has no ONNX export (None: it has one); read by :func:`milsdk.export.onnx.export_onnx`."""
        if self.grid == "all_cells":
            return ONNX_REFUSAL
        return None

    def _forward_all_cells(
        self, H: torch.Tensor, keep: torch.Tensor, cells: torch.Tensor, return_att: bool
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """torchmil's SETMIL over each bag's dense grid (``grid="all_cells"``; see the class docstring).

        H (B, N, E) projected instances, keep (B, N) bool, cells (B, N, 2) long.
        """
        if not torch.jit.is_scripting():
            if _exporting():  # export_onnx refuses first (onnx_unsupported); this covers torch.export itself
                raise ModelConfigError(f"SETMIL: {ONNX_REFUSAL}")
        if bool(((cells < 0) & keep.unsqueeze(-1)).any()):
            raise ValueError("SETMIL grid='all_cells': coords must be >= 0 (they index torchmil's grid)")
        B, N, E = H.shape[0], H.shape[1], H.shape[2]
        device = H.device
        cells = cells * keep.unsqueeze(-1).to(cells.dtype)
        sides = grid_sides(cells, keep)  # (B,)
        if self.pmf is not None:
            tokens = self.pmf(H, keep, cells)  # a GridPMF in this mode
            g = self.pmf_geometry
            n_tokens = patch_grid(torch.stack([sides, sides], dim=1), g[0], g[1], g[2], g[3]).prod(dim=1)
        else:
            top = int(sides.max())
            tokens = torchmil_grid_tokens(cells_to_grid(H, keep, cells, sides, top * top), sides)
            n_tokens = sides * sides
        L = tokens.shape[1] + 1
        index = torch.arange(L, device=device)
        pe = self.pos_embed.encode(index.reshape(1, L, 1)).to(tokens.dtype)
        cls = self.cls_token.to(tokens.dtype).expand(B, 1, self.att_dim)
        seq = torch.cat([cls, tokens], dim=1) + pe
        seq_keep = index.unsqueeze(0) < (n_tokens + 1).unsqueeze(1)
        pos = torch.zeros(B, L, 2, dtype=torch.long, device=device)  # unused in the torchmil layout
        Y, att = self.se_transf.forward_pos(seq, seq_keep, pos)
        logits = self.squeeze_binary(self.classifier(Y[:, 0]))
        if not return_att:
            return logits
        if not self.att_on_cells:  # torchmil's zeros: a strided pyramid's patches are not the cells
            return logits, torch.zeros(B, N, dtype=logits.dtype, device=device)
        row = att.mean(dim=1)[:, 1:]  # (B, L - 1) over each bag's cells, its own row-major layout
        slot = (cells[..., 0] * sides.unsqueeze(1) + cells[..., 1]).clamp(max=L - 2)
        instance_att = row.gather(1, slot) * keep.to(row.dtype)
        return logits, instance_att.to(logits.dtype)
