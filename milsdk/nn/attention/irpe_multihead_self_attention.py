r"""Multi-head self-attention with image relative position encoding (iRPE; Wu et al., ICCV 2021, "Rethinking
and improving relative position encoding for vision transformer"), masked per bag, with positions taken from
grid coordinates and memory linear in the sequence length."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from milsdk.nn.irpe import build_rpe, get_rpe_config, grid_positions
from milsdk.nn.masked import as_bool_mask

__all__ = ["iRPEMultiheadSelfAttention", "coords_to_positions", "DEFAULT_CHUNK_ROWS", "integer_sqrt"]

#: query rows per chunk, summed over the heads: a chunk's score block holds B x DEFAULT_CHUNK_ROWS x L floats.
DEFAULT_CHUNK_ROWS = 256

_METHODS = ("euc", "quant", "cross", "product")
_LAYOUTS = ("positions", "torchmil")


@torch.jit.unused
def _exporting() -> bool:
    """True while torch.export / the dynamo ONNX exporter traces the model (never called by TorchScript)."""
    return bool(torch.compiler.is_exporting())


def integer_sqrt(n: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(n)) of a non-negative long tensor, exact (the float square root corrected by one step).

    Args:
        n: any shape, long, >= 0.

    Returns:
        Same shape, long.
    """
    r = torch.sqrt(n.to(torch.float64)).floor().to(torch.long)
    r = r - (r * r > n).to(torch.long)
    return r + ((r + 1) * (r + 1) <= n).to(torch.long)


def coords_to_positions(coords: torch.Tensor, skip: int) -> torch.Tensor:
    """Integer grid positions of a whole sequence from the coordinates of its spatial tokens.

    Args:
        coords: (B, L - skip, 2) grid coordinates of the tokens after the first ``skip``; floats are floored
            (the reference casts with ``.long()``, which floors non-negative coordinates).
        skip: number of leading non-spatial tokens (they get position (0, 0), unused by their own bucket).

    Returns:
        (B, L, 2) long.
    """
    cells = torch.floor(coords).to(torch.long) if coords.is_floating_point() else coords.to(torch.long)
    lead = torch.zeros(cells.shape[0], skip, 2, dtype=torch.long, device=cells.device)
    return torch.cat([lead, cells], dim=1)


class iRPEMultiheadSelfAttention(torch.nn.Module):
    r"""Multi-head self-attention over the real tokens of each bag with image relative position encoding.

    Per head, with :math:`q_i, k_j, v_j` of size :math:`d` and buckets :math:`b(i, j)` of the grid offset of
    tokens i and j (:mod:`milsdk.nn.irpe`):

    .. math::
        s_{ij} = \frac{q_i^\top k_j}{\sqrt d}
            + \underbrace{\frac{q_i^\top r^K_{b(i,j)}}{\sqrt d}}_{\text{on keys}}
            + \underbrace{\frac{k_j^\top r^Q_{b(j,i)}}{\sqrt d}}_{\text{on queries}},\qquad
        a_{ij} = \operatorname{softmax}_{j \in \text{real}}(s_{ij}),\qquad
        y_i = \sum_j a_{ij} \big(v_j + \underbrace{r^V_{b(i,j)}}_{\text{on values}}\big)

    ('bias' mode replaces the contextual terms by a learned scalar per bucket). The first ``rpe_skip`` tokens
    (a class token) are not on the grid: they share one extra bucket with every token. ``rpe_mode=None`` is
    plain multi-head self-attention (the reference crashes on it).

    Positions: ``coords`` (B, L - skip, 2) gives each spatial token its own grid cell, so a sequence may hold
    only the occupied cells of a sparse grid, in any order. Without coords, the k-th real spatial token of a
    bag sits at (k // w, k % w) of a w-wide grid (``width``; default each bag's own ceil(sqrt(n)) square, the
    reference's layout). Either way a bag's real outputs do not depend on its padding.

    Deviations from the reference (torchmil 1.0.2): heads are split properly ((B, L, H, d) -> (B, H, L, d); the
    reference reshapes (B, L, H*d) straight to (B, H, L, d), mixing tokens and heads); masked keys get the
    finite float32 minimum, padded and all-masked query rows return zero attention (the reference's maps are
    NaN under a mask, defect 8.2); no square padding of the sequence (positions are explicit).

    ``layout="torchmil"`` computes the reference's function instead, per bag (each bag's real tokens must come
    first, then its padding): the bag's sequence of n tokens is padded with zero tokens to ``rpe_skip`` + the
    next square :math:`s^2 \ge n - \text{skip}`, those zero tokens are keys like any other (unmasked, as in
    the reference), the heads are split with the reference's reshape of (L', H d) to (H, L', d), and position
    k of every head's sequence sits at ((k - skip) // s, (k - skip) % s); the output keeps the bag's first n
    rows and the attention its first n columns. Padding beyond n is masked, so a bag's outputs equal its own
    alone. ``coords`` / ``pos`` are not used in that layout.

    Memory: queries are processed in chunks of ``DEFAULT_CHUNK_ROWS // n_heads`` rows, so only a
    (B, H, rows, L) block is alive at a time: linear in L in eager PyTorch, TorchScript (Python loop) and the
    ONNX graph exported with ``torch.onnx.export(dynamo=True)`` (``torch.scan``, written as an ONNX Scan). Only
    ``return_att=True`` forms the (B, H, L, L) weights.

    Args:
        in_dim: token size D.
        out_dim: output size (default ``in_dim``); an output projection exists when it differs from att_dim.
        att_dim: total query/key/value size over the heads (forced to ``in_dim`` when ``learn_weights=False``).
        n_heads: number of heads; must divide ``att_dim``.
        dropout: dropout on the attention weights (training only).
        learn_weights: learn the bias-free q/k/v projection; if False, q = k = v = x.
        rpe_ratio: bucket ratio r (alpha = r, beta = 2r, gamma = 8r).
        rpe_method: 'product', 'euc', 'quant' or 'cross'.
        rpe_mode: 'contextual', 'bias' or None (no position encoding).
        rpe_shared_head: one encoding table for every head.
        rpe_skip: leading non-spatial tokens (0 or 1).
        rpe_on: where the encoding applies: a combination of 'q', 'k', 'v' ('v' needs 'contextual').
        layout: "positions" (default: explicit positions, heads split properly) or "torchmil" (the reference's
            square padding and head reshape, see above).
    """

    __constants__ = ["n_heads", "head_dim", "att_dim", "rpe_skip", "chunk_rows", "layout"]

    def __init__(
        self,
        in_dim: int,
        out_dim: int | None = None,
        att_dim: int = 512,
        n_heads: int = 4,
        dropout: float = 0.0,
        learn_weights: bool = True,
        rpe_ratio: float = 1.9,
        rpe_method: str = "product",
        rpe_mode: str | None = "contextual",
        rpe_shared_head: bool = True,
        rpe_skip: int = 1,
        rpe_on: str = "k",
        *,
        layout: str = "positions",
    ) -> None:
        super().__init__()
        if layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {list(_LAYOUTS)}, got {layout!r}")
        self.layout = layout
        if rpe_method not in _METHODS:
            raise ValueError(f"rpe_method must be one of {list(_METHODS)}, got {rpe_method!r}")
        if rpe_mode not in (None, "bias", "contextual"):
            raise ValueError(f"rpe_mode must be one of [None, 'bias', 'contextual'], got {rpe_mode!r}")
        if rpe_skip not in (0, 1):
            raise ValueError(f"rpe_skip must be 0 or 1, got {rpe_skip!r}")
        out_dim = in_dim if out_dim is None else out_dim
        if not learn_weights:
            att_dim = in_dim
        if n_heads < 1 or att_dim % n_heads != 0:
            raise ValueError(f"iRPEMultiheadSelfAttention: n_heads={n_heads} must divide att_dim={att_dim}")
        self.in_dim, self.out_dim, self.att_dim = in_dim, out_dim, att_dim
        self.n_heads, self.head_dim = n_heads, att_dim // n_heads
        self.dropout, self.learn_weights, self.rpe_skip = float(dropout), learn_weights, int(rpe_skip)
        self.rpe_method, self.rpe_mode, self.rpe_on = rpe_method, rpe_mode, rpe_on
        self.chunk_rows = max(1, DEFAULT_CHUNK_ROWS // n_heads)
        self.scale = float(self.head_dim) ** -0.5
        self.qkv_nn = torch.nn.Linear(in_dim, 3 * att_dim, bias=False) if learn_weights else None
        self.out_proj = torch.nn.Linear(att_dim, out_dim) if out_dim != att_dim else torch.nn.Identity()
        config = get_rpe_config(rpe_ratio, rpe_method, rpe_mode, rpe_shared_head, rpe_skip, rpe_on)
        if rpe_mode is None:
            self.rpe_q, self.rpe_k, self.rpe_v = None, None, None
        else:
            self.rpe_q, self.rpe_k, self.rpe_v = build_rpe(config, self.head_dim, n_heads)

    # -- the attention core ----------------------------------------------------------------------------------
    def _rows(
        self,
        q: torch.Tensor,
        pos_q: torch.Tensor,
        skip_q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        keep: torch.Tensor,
        pos: torch.Tensor,
        skip_k: torch.Tensor,
        prep_q: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs and weights of a block of query rows against every key.

        q (B, H, R, d) scaled queries, pos_q (B, R, 2), skip_q (R,); k, v (B, H, L, d), keep (B, L),
        pos (B, L, 2), skip_k (L,); prep_q: the keys' :meth:`iRPE.prepare` for iRPE on queries.
        Returns (B, H, R, d) and (B, H, R, L).
        """
        scores = q @ k.transpose(-1, -2)
        if self.rpe_k is not None:
            scores = scores + self.rpe_k.bias_from(self.rpe_k.prepare(q), pos_q, pos, skip_q, skip_k)
        if self.rpe_q is not None:
            scores = scores + self.rpe_q.bias_from(prep_q, pos, pos_q, skip_k, skip_q).transpose(-1, -2)
        # finite float32 minimum as a literal: TorchScript has no torch.finfo
        scores = scores.masked_fill(~keep[:, None, None, :], -3.4028234663852886e38)
        # a row without any real key would be uniform: zero it (never NaN)
        att = torch.softmax(scores, dim=-1) * keep.any(dim=1).to(scores.dtype)[:, None, None, None]
        att_d = F.dropout(att, p=self.dropout, training=self.training)
        out = att_d @ v
        if self.rpe_v is not None:
            out = out + self.rpe_v.value_term(att_d, pos_q, pos, skip_q, skip_k)
        return out, att

    def _prepare_queries_side(self, k: torch.Tensor) -> torch.Tensor:
        if self.rpe_q is not None:
            return self.rpe_q.prepare(k * self.scale)
        return k.new_zeros(0)

    def _loop_chunks(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        keep: torch.Tensor,
        pos: torch.Tensor,
        skip_k: torch.Tensor,
        prep_q: torch.Tensor,
    ) -> torch.Tensor:
        """Every query row, chunk by chunk (eager PyTorch and TorchScript)."""
        L = q.shape[2]
        rows = self.chunk_rows
        # Written into one preallocated output: small per-chunk results kept alive between the large
        # temporaries fragment the heap, and RSS then grows with L^2 even though live memory does not.
        out = q.new_empty(q.shape[0], q.shape[1], L, v.shape[3])
        for start in range(0, L, rows):
            end = min(start + rows, L)
            out[:, :, start:end] = self._rows(
                q[:, :, start:end], pos[:, start:end], skip_k[start:end], k, v, keep, pos, skip_k, prep_q
            )[0]
        return out

    @torch.jit.unused
    def _scan_chunks(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        keep: torch.Tensor,
        pos: torch.Tensor,
        skip_k: torch.Tensor,
        prep_q: torch.Tensor,
    ) -> torch.Tensor:
        """Every query row through ``torch.scan`` over chunks, for torch.export (an ONNX Scan): the graph
        holds one (B, H, rows, L) block per step at every L."""
        from torch._higher_order_ops.scan import scan  # prototype API: imported on the export path only

        B, H, L, d = q.shape[0], q.shape[1], q.shape[2], q.shape[3]
        rows = self.chunk_rows
        # One chunk more than needed, so that the count is >= 2 at every L: an example that fits in one chunk
        # would otherwise specialise the count to 1.
        n_chunks = (L + rows - 1) // rows + 1
        pad = n_chunks * rows - L
        q_chunks = F.pad(q, (0, 0, 0, pad)).reshape(B, H, n_chunks, rows, d).permute(2, 0, 1, 3, 4)
        pos_chunks = F.pad(pos, (0, 0, 0, pad)).reshape(B, n_chunks, rows, 2).transpose(0, 1)
        index_chunks = torch.arange(n_chunks * rows, device=q.device).reshape(n_chunks, rows)
        # the scan body may not close over aliased tensors (k and v are views of one projection)
        k, v, keep, pos, skip_k, prep_q = (t.clone() for t in (k, v, keep, pos, skip_k, prep_q))

        def step(
            carry: torch.Tensor, xs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
        ) -> tuple[torch.Tensor, torch.Tensor]:
            q_c, pos_c, index_c = xs
            out, _ = self._rows(q_c, pos_c, index_c < self.rpe_skip, k, v, keep, pos, skip_k, prep_q)
            return carry.clone(), out

        _, out = scan(step, q.new_zeros(1), (q_chunks, pos_chunks, index_chunks))
        return out.permute(1, 2, 0, 3, 4).reshape(B, H, n_chunks * rows, d)[:, :, :L]

    def _all_rows(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        keep: torch.Tensor,
        pos: torch.Tensor,
        skip_k: torch.Tensor,
        prep_q: torch.Tensor,
    ) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if _exporting():
                return self._scan_chunks(q, k, v, keep, pos, skip_k, prep_q)
        return self._loop_chunks(q, k, v, keep, pos, skip_k, prep_q)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, L = t.shape[0], t.shape[1]
        return t.reshape(B, L, self.n_heads, self.head_dim).transpose(1, 2)

    def forward_pos(
        self, x: torch.Tensor, keep: torch.Tensor, pos: torch.Tensor, full_att: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention with explicit positions (what layers and models call).

        Args:
            x: (B, L, in_dim) tokens.
            keep: (B, L) bool, True = real token.
            pos: (B, L, 2) long grid positions of every token (those of the skip tokens are unused).
            full_att: return the (B, H, L, L) weights instead of the first token's row.

        Returns:
            y: (B, L, out_dim); att: (B, H, L) weights of token 0 (the class token) over every token, or with
            ``full_att`` (B, H, L, L). Weights of padded keys are 0.
        """
        if self.layout == "torchmil":
            return self._forward_torchmil(x, keep, full_att)
        B, L = x.shape[0], x.shape[1]
        work_dtype = torch.promote_types(x.dtype, torch.float32)
        if self.qkv_nn is not None:
            q, k, v = self.qkv_nn(x).chunk(3, dim=-1)
        else:
            q, k, v = x, x, x
        q = (self._heads(q).to(work_dtype) * self.scale).contiguous()
        k = self._heads(k).to(work_dtype).contiguous()
        v = self._heads(v).to(work_dtype).contiguous()
        keep = keep.to(x.device)
        pos = pos.to(x.device)
        skip_k = torch.arange(L, device=x.device) < self.rpe_skip
        prep_q = self._prepare_queries_side(k)
        if full_att:
            out, att = self._rows(q, pos, skip_k, k, v, keep, pos, skip_k, prep_q)
        else:
            _, first = self._rows(q[:, :, :1], pos[:, :1], skip_k[:1], k, v, keep, pos, skip_k, prep_q)
            att = first[:, :, 0]
            out = self._all_rows(q, k, v, keep, pos, skip_k, prep_q)
        y = out.transpose(1, 2).reshape(B, L, self.att_dim).to(x.dtype)
        return self.out_proj(y), att

    def _torchmil_heads(self, t: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """The reference's head split, per bag: its (L'_b, H d) rows read as (H, L'_b, d).

        t: (B, L', H d) with each bag's rows past L'_b zero; length: (B,) L'_b. Returns (B, H, L', d); rows
        past L'_b are meaningless (masked by the caller).
        """
        B, L = t.shape[0], t.shape[1]
        H, d = self.n_heads, self.head_dim
        head = torch.arange(H, device=t.device).reshape(1, H, 1, 1)
        row = torch.arange(L, device=t.device).reshape(1, 1, L, 1)
        col = torch.arange(d, device=t.device).reshape(1, 1, 1, d)
        flat = ((head * length.reshape(B, 1, 1, 1) + row) * d + col).clamp(max=L * H * d - 1)
        return t.reshape(B, L * H * d).gather(1, flat.reshape(B, H * L * d)).reshape(B, H, L, d)

    def _forward_torchmil(
        self, x: torch.Tensor, keep: torch.Tensor, full_att: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward_pos` in the reference's layout (see the class docstring)."""
        B, L = x.shape[0], x.shape[1]
        device = x.device
        work_dtype = torch.promote_types(x.dtype, torch.float32)
        keep = keep.to(device)
        n = keep.to(torch.long).sum(dim=1)  # each bag's tokens (real first, then padding)
        spatial = (n - self.rpe_skip).clamp_min(0)
        root = integer_sqrt(spatial)
        side = root + (root * root < spatial).to(torch.long)
        length = torch.where(n > 0, side * side + self.rpe_skip, torch.zeros_like(n))  # L'_b
        padded = max(int(length.max()), L)
        index = torch.arange(padded, device=device)
        # the reference pads with zero tokens after the attention's input norm
        x = F.pad(x, (0, 0, 0, padded - L)) * (index.unsqueeze(0) < n.unsqueeze(1)).unsqueeze(-1).to(x.dtype)
        if self.qkv_nn is not None:
            q, k, v = self.qkv_nn(x).chunk(3, dim=-1)
        else:
            q, k, v = x, x, x
        q = (self._torchmil_heads(q.contiguous(), length).to(work_dtype) * self.scale).contiguous()
        k = self._torchmil_heads(k.contiguous(), length).to(work_dtype).contiguous()
        v = self._torchmil_heads(v.contiguous(), length).to(work_dtype).contiguous()
        square = index.unsqueeze(0) < length.unsqueeze(1)  # (B, L'): the zero tokens are keys too
        cell = (index - self.rpe_skip).clamp_min(0).unsqueeze(0)
        width = side.clamp_min(1).unsqueeze(1)
        rows = torch.div(cell, width, rounding_mode="floor")
        pos = torch.stack([rows, cell - rows * width], dim=-1) * (index >= self.rpe_skip).to(torch.long).reshape(
            1, padded, 1
        )
        skip_k = index < self.rpe_skip
        prep_q = self._prepare_queries_side(k)
        real = keep[:, :L].to(work_dtype)  # the bag's own zero tokens are keys, but not outputs
        if full_att:
            out, att = self._rows(q, pos, skip_k, k, v, square, pos, skip_k, prep_q)
            att = att[:, :, :L, :L] * real[:, None, :, None] * real[:, None, None, :]
        else:
            _, first = self._rows(q[:, :, :1], pos[:, :1], skip_k[:1], k, v, square, pos, skip_k, prep_q)
            att = first[:, :, 0, :L] * real[:, None, :]
            out = self._all_rows(q, k, v, square, pos, skip_k, prep_q)
        y = out.transpose(1, 2).reshape(B, padded, self.att_dim).to(x.dtype)
        return self.out_proj(y)[:, :L], att

    def positions(
        self,
        x: torch.Tensor,
        keep: torch.Tensor,
        height: int | None = None,
        width: int | None = None,
        coords: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, L, 2) long positions of every token, from ``coords`` or the row-major grid layout."""
        if coords is not None:
            return coords_to_positions(coords.to(x.device), self.rpe_skip)
        return grid_positions(keep, self.rpe_skip, height, width)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_att: bool = False,
        height: int | None = None,
        width: int | None = None,
        coords: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Attend over each bag's real tokens.

        Args:
            x: (B, L, in_dim) tokens (the first ``rpe_skip`` are non-spatial, e.g. a class token).
            mask: (B, L) True / 1 = real token (bool or uint8); None = all real.
            return_att: also return the (B, H, L, L) attention weights (0 for padded keys and for rows of bags
                without real tokens; this forms the full matrix).
            height, width: grid of the spatial tokens when ``coords`` is None.
            coords: (B, L - rpe_skip, 2) grid coordinates of the spatial tokens (floats are floored).

        Returns:
            y: (B, L, out_dim) (finite, meaningless at padded positions); with ``return_att`` also the weights.
        """
        keep = as_bool_mask(mask, x)
        pos = self.positions(x, keep, height, width, coords)
        y, att = self.forward_pos(x, keep, pos, return_att)
        if return_att:
            return y, att
        return y

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, out_dim={self.out_dim}, att_dim={self.att_dim}, n_heads={self.n_heads}, "
            f"rpe_method={self.rpe_method!r}, rpe_mode={self.rpe_mode!r}, rpe_on={self.rpe_on!r}, "
            f"rpe_skip={self.rpe_skip}" + (f", layout={self.layout!r}" if self.layout != "positions" else "")
        )
