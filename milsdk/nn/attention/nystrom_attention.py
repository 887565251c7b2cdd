"""Nyström self-attention (Xiong et al., AAAI 2021, "Nyströmformer: A Nyström-based Algorithm for
Approximating Self-Attention"), with per-bag masking so that padding never changes the outputs of real
tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from milsdk.nn.export_mode import exporting as is_exporting
from milsdk.nn.linear import linear_in_weight_dtype
from milsdk.nn.masked import as_bool_mask

__all__ = ["NystromAttention", "moore_penrose_iter_pinv", "nystrom_attention_rows"]


def _masked_softmax_last(
    scores: torch.Tensor, keep_cols: torch.Tensor, keep_rows: torch.Tensor
) -> torch.Tensor:
    """Softmax over the last axis restricted to ``keep_cols``, with the rows outside ``keep_rows`` set to 0.

    Masked scores get -1e30 added (never -inf), so no row can produce NaN; callers pass ``keep_rows`` False for
    every row that has no kept column (its softmax would be uniform). The result is that of filling the masked
    scores with a minimum: a kept score gains exactly 0, a masked one's exp underflows to exactly 0 (any score
    below 1e23 in size). Adding a (..., 1, C) bias instead of a ``Where`` over the (..., R, C) scores: the same
    bytes, but onnxruntime's broadcast Add runs 3x faster than its Where (1.6 vs 4.4 ms on (1, 4, 256, 4097);
    four such fills were 9% of TransMIL's run at 4,000 instances). Scores are float32 or float64 here.

    Args:
        scores: (..., R, C).
        keep_cols: bool, broadcastable to scores, True = column takes part.
        keep_rows: bool, broadcastable to scores (size 1 on the last axis), True = row kept.
    """
    weights = torch.softmax(scores + (~keep_cols).to(scores.dtype) * -1e30, dim=-1)
    return weights * keep_rows.to(weights.dtype)


#: a LayerNorm's (weight, bias, eps), applied by the chunked paths to each chunk of tokens they read
ChunkNorm = tuple[torch.Tensor, torch.Tensor, float]


def _normalised(x: torch.Tensor, norm: ChunkNorm | None) -> torch.Tensor:
    """x (B, L, D) layer-normalised with ``norm`` (weight, bias, eps), or x itself when None."""
    if norm is None:
        return x
    return F.layer_norm(x, (x.shape[2],), norm[0], norm[1], norm[2])


def _take_chunk(x: torch.Tensor, index: torch.Tensor, norm: ChunkNorm | None) -> torch.Tensor:
    """Tokens ``index`` (C,) of x (B, L, D), layer-normalised with ``norm`` when given: (B, C, D).

    LayerNorm acts on each token alone, so normalising a chunk equals taking the chunk of the normalised
    sequence; a chunked pass that normalises its chunks never holds the whole normalised (B, L, D) sequence.
    """
    return _normalised(x.index_select(1, index), norm)


def moore_penrose_iter_pinv(x: torch.Tensor, iters: int = 6, shared_axes: int = 0) -> torch.Tensor:
    r"""Moore–Penrose pseudo-inverse of a batch of square matrices by the iteration of Razavi et al. (2014).

    .. math::
        Z_0 = \frac{A^\top}{\lVert A\rVert_1 \lVert A\rVert_\infty}, \qquad
        Z_{t+1} = \tfrac14 Z_t \big(13 I - A Z_t (15 I - A Z_t (7 I - A Z_t))\big)

    The initial scaling uses the norms of **each** matrix (amax over that matrix only), not the maximum over
    the whole batch as common implementations do: there, a bag's result would depend on the other bags in its
    batch. A zero matrix (an all-masked bag) gives a zero pseudo-inverse, never NaN. Zero rows / columns stay
    zero, so the pseudo-inverse of ``[[A, 0], [0, 0]]`` is ``[[pinv(A), 0], [0, 0]]`` to rounding.

    Args:
        x: (..., M, M) matrices.
        iters: number of iterations (6 is the Nyströmformer default).
        shared_axes: how many batch axes next to the matrices share one initial scale (0 = each matrix its
            own; 1 on (B, h, M, M) = a bag's heads together, which is what torchmil's batch-wide scale computes
            for a bag alone). The iteration stops short of convergence, so the scale shows in the result.

    Returns:
        (..., M, M) approximate pseudo-inverses.
    """
    abs_x = x.abs()
    norm_1 = abs_x.sum(dim=-2).amax(dim=-1, keepdim=True)  # max column sum
    norm_inf = abs_x.sum(dim=-1).amax(dim=-1, keepdim=True)  # max row sum
    for i in range(shared_axes):
        norm_1 = norm_1.amax(dim=-2 - i, keepdim=True)
        norm_inf = norm_inf.amax(dim=-2 - i, keepdim=True)
    scale = (norm_1 * norm_inf).clamp_min(1.1754943508222875e-38).unsqueeze(-1)  # float32 tiny (also > 0 in f64)
    z = x.transpose(-1, -2) / scale
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


def nystrom_attention_rows(
    att: tuple[torch.Tensor, torch.Tensor, torch.Tensor], index: torch.Tensor
) -> torch.Tensor:
    """Rows of the approximate attention matrix from its Nyström factors, without forming the L x L matrix.

    Args:
        att: ``(kernel1 (B, h, L, m), kernel2_pinv (B, h, m, m), kernel3 (B, h, m, L))`` as returned by
            :class:`NystromAttention` with ``return_att=True``.
        index: (R,) long, the query rows wanted.

    Returns:
        (B, h, R, L): ``kernel1[:, :, index] @ kernel2_pinv @ kernel3``.
    """
    kernel1, kernel2_pinv, kernel3 = att
    return (kernel1.index_select(2, index) @ kernel2_pinv) @ kernel3


# The landmark schemes NystromAttention(landmarks=...) knows (see its docstring).
LANDMARK_SCHEMES = ("segments", "torchmil")


def _landmark_count(n_landmarks: int, seq_len: int) -> int:
    """min(n_landmarks, seq_len), symbolic under torch.export (a plain ``min`` would specialise seq_len)."""
    if torch.jit.is_scripting():
        return min(n_landmarks, seq_len)
    return torch.sym_min(n_landmarks, seq_len)


class NystromAttention(torch.nn.Module):
    r"""Multi-head self-attention approximated with the Nyström method, masked per bag.

    With queries :math:`Q` (scaled by :math:`1/\sqrt{d}`), keys :math:`K`, values :math:`V` of one bag and
    head, and landmarks :math:`\tilde Q, \tilde K` (means of contiguous segments of the bag's real tokens):

    .. math::
        \operatorname{Att}(X) \approx
        \underbrace{\operatorname{softmax}(Q\tilde K^\top)}_{\text{kernel1 } (L, m)}\;
        \underbrace{\operatorname{softmax}(\tilde Q\tilde K^\top)^{+}}_{\text{kernel2 pinv } (m, m)}\;
        \underbrace{\operatorname{softmax}(\tilde Q K^\top)}_{\text{kernel3 } (m, L)}\; V

    Masking: a bag with :math:`n_b` real tokens uses :math:`m_b = \min(m, n_b)` landmarks; the real token of
    rank :math:`r` (its index among the bag's real tokens) belongs to segment
    :math:`\lfloor r m_b / n_b \rfloor`. Padded tokens belong to no segment, unused landmark slots are masked
    out of all three kernels (kernel2 on both axes), padded tokens are masked out of kernel3, and the
    pseudo-inverse is scaled per (bag, head). A bag's real outputs are therefore the same alone or padded in
    any batch (to float rounding). When :math:`n_b \le m` every landmark is one token and the result equals
    exact softmax attention up to the pseudo-inverse's convergence. The segments need no padding of the
    sequence to a multiple of ``n_landmarks`` (unlike the reference).

    Cost O(L·m) memory and O(L·m·d + m³) time per head; the L x L matrix is never formed. Kernels are computed
    in float32 at least.

    Args:
        in_dim: token size D.
        out_dim: output size (default ``in_dim``).
        att_dim: total query/key/value size over all heads (forced to ``in_dim`` when
            ``learn_weights=False``).
        n_heads: number of heads; must divide ``att_dim``.
        learn_weights: learn the q/k/v projections (bias-free) and an output projection; if False,
            q = k = v = X and the output projection exists only when ``out_dim != in_dim``.
        n_landmarks: m, the maximum number of landmarks per bag.
        pinv_iterations: iterations of :func:`moore_penrose_iter_pinv`.
        landmarks: ``"segments"`` (the scheme above) or ``"torchmil"``, torchmil 1.0.2's scheme applied to each
            bag's real tokens, for models converted from torchmil (:func:`milsdk.models.from_torchmil`): the
            bag is front-padded with :math:`P_b = m l_b - n_b` zero tokens, :math:`l_b = \lceil n_b/m\rceil`;
            always :math:`m` landmarks, each the sum of a window of :math:`l_b` tokens divided by :math:`l_b`
            (zero tokens included); the zero tokens are keys (score 0, value 0); the pseudo-inverse's
            initial scale is shared by a bag's heads. Still padding-invariant: nothing depends on the batch.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int | None = None,
        att_dim: int = 512,
        n_heads: int = 4,
        learn_weights: bool = True,
        n_landmarks: int = 256,
        pinv_iterations: int = 6,
        *,
        landmarks: str = "segments",
    ) -> None:
        super().__init__()
        if landmarks not in LANDMARK_SCHEMES:
            raise ValueError(f"NystromAttention: landmarks={landmarks!r}, expected one of {LANDMARK_SCHEMES}")
        out_dim = in_dim if out_dim is None else out_dim
        if not learn_weights:
            att_dim = in_dim
        if n_heads < 1 or att_dim % n_heads != 0:
            raise ValueError(f"NystromAttention: n_heads={n_heads} must divide att_dim={att_dim}")
        if n_landmarks < 1:
            raise ValueError(f"NystromAttention: n_landmarks must be >= 1, got {n_landmarks}")
        if pinv_iterations < 0:
            raise ValueError(f"NystromAttention: pinv_iterations must be >= 0, got {pinv_iterations}")
        self.in_dim, self.out_dim, self.att_dim = in_dim, out_dim, att_dim
        self.n_heads, self.head_dim = n_heads, att_dim // n_heads
        self.learn_weights = learn_weights
        self.n_landmarks, self.pinv_iterations = n_landmarks, pinv_iterations
        self.landmarks = landmarks
        self.scale = float(self.head_dim) ** -0.5
        self.qkv = torch.nn.Linear(in_dim, 3 * att_dim, bias=False) if learn_weights else None
        if learn_weights or out_dim != att_dim:
            self.out_proj: torch.nn.Module = torch.nn.Linear(att_dim, out_dim)
        else:
            self.out_proj = torch.nn.Identity()

    def _split_heads(self, t: torch.Tensor, work_dtype: torch.dtype) -> torch.Tensor:
        """(B, L, h*d) -> (B, h, L, d) in the working dtype."""
        B, L = t.shape[0], t.shape[1]
        return t.reshape(B, L, self.n_heads, self.head_dim).transpose(1, 2).to(work_dtype)

    def _landmark_plan(
        self, keep: torch.Tensor, x: torch.Tensor, all_slots: bool = False
    ) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Which landmark each token pools into, from the mask alone (O(B L) integers).

        ``all_slots``: m = n_landmarks even when L is smaller (the slots past a bag's tokens are masked, so the
        result is the same to rounding); a loop over chunks needs its carried shapes known from the weights.

        Returns:
            m (the landmark slots), segment (B, L) slot of each token (-1 = padding, in no segment), divisor
            (B, 1, 1) of the window sums for ``"torchmil"`` (ones for ``"segments"``, whose divisor is each
            segment's size), has_landmark (B, m) bool, n_front (B, 1) torchmil's zero tokens in front (0 for
            ``"segments"``).
        """
        B, L = keep.shape[0], keep.shape[1]
        real = keep.to(torch.long)
        n_real = real.sum(dim=1, keepdim=True)  # (B, 1)
        rank = real.cumsum(dim=1) - 1  # (B, L)
        if self.landmarks == "torchmil":
            # torchmil's scheme on each bag's own real tokens: P_b = m * l_b - n_b zero tokens in front
            # (l_b = ceil(n_b / m)), then m windows of l_b tokens; a landmark is its window's sum / l_b, zeros
            # included. The zero tokens (q = k = v = 0: the projections have no bias) are keys too, see kernel3.
            m = self.n_landmarks
            per_window = torch.div(n_real + (m - 1), m, rounding_mode="floor").clamp_min(1)  # (B, 1) l_b
            n_front = m * per_window - n_real  # (B, 1) P_b
            segment = torch.div(rank + n_front, per_window, rounding_mode="floor")
            divisor = per_window.unsqueeze(-1).to(x.dtype)  # (B, 1, 1)
            has_landmark = (n_real > 0).expand(B, m)  # (B, m): every window, also all-zero ones
        else:
            # Landmark segments of each bag's own real tokens: rank r -> floor(r * m_b / n_b).
            m = self.n_landmarks if all_slots else _landmark_count(self.n_landmarks, L)
            m_b = n_real.clamp(max=m)
            segment = torch.div(rank * m_b, n_real.clamp_min(1), rounding_mode="floor")
            n_front = torch.zeros_like(n_real)
            divisor = torch.ones(1, 1, 1, dtype=x.dtype, device=x.device)
            has_landmark = torch.arange(m, device=x.device).unsqueeze(0) < m_b  # (B, m)
        segment = torch.where(keep, segment, torch.full_like(segment, -1))  # padding -> no segment
        return m, segment, divisor, has_landmark, n_front

    def forward_att(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``forward(x, mask, return_att=True)`` with one fixed return type (what TorchScript callers use)."""
        B, L = x.shape[0], x.shape[1]
        keep = as_bool_mask(mask, x)
        work_dtype = torch.promote_types(x.dtype, torch.float32)
        m, segment, divisor, has_landmark, n_front = self._landmark_plan(keep, x)
        slots = torch.arange(m, device=x.device)
        assign = (segment.unsqueeze(-1) == slots).to(x.dtype)  # (B, L, m) one-hot, padding rows all 0
        if self.landmarks != "torchmil":
            divisor = assign.sum(dim=1, keepdim=True).clamp_min(1)  # (B, 1, m) segment sizes: means
        # Pooled inputs: the bias-free q/k projections commute with the pooling, so projecting the m
        # landmark inputs costs O(m) instead of pooling q and k over all L tokens.
        x_land = (assign / divisor).transpose(1, 2) @ x  # (B, m, in_dim)

        if self.qkv is not None:
            # three products on row blocks of the weight, not one product chunked: a (L, 3 * att_dim) output
            # split in three is three more copies of (L, att_dim) in an exported graph (onnxruntime's Split)
            q, k, v = self._project(x, 0), self._project(x, 1), self._project(x, 2)
            q_land, k_land = linear_in_weight_dtype(x_land, self.qkv.weight[: 2 * self.att_dim]).chunk(2, dim=-1)
        else:
            q, k, v = x, x, x
            q_land, k_land = x_land, x_land
        q = self._split_heads(q, work_dtype)
        k = self._split_heads(k, work_dtype)
        v = self._split_heads(v, work_dtype)
        # The 1/sqrt(d) scale of the queries is applied to the (small) landmark tensors: same products.
        q_land = self._split_heads(q_land, work_dtype) * self.scale
        k_land = self._split_heads(k_land, work_dtype)

        lm_col = has_landmark[:, None, None, :]
        lm_row = has_landmark[:, None, :, None]
        scores1 = q @ (k_land * self.scale).transpose(-1, -2)
        kernel1 = _masked_softmax_last(scores1, lm_col, keep[:, None, :, None])
        kernel2 = _masked_softmax_last(q_land @ k_land.transpose(-1, -2), lm_col, lm_row)
        scores3 = q_land @ k.transpose(-1, -2)  # (B, h, m, L)
        if self.landmarks == "torchmil":
            # The P_b front zero keys (score 0, value 0) as one more column with logit log(P_b): the same
            # softmax denominator; the column is then dropped (its values are 0).
            zeros_in_front = n_front > 0  # (B, 1)
            front = torch.log(n_front.clamp_min(1).to(work_dtype)).reshape(B, 1, 1, 1)
            front = front.expand(B, self.n_heads, m, 1)
            scores3 = torch.cat([scores3, front], dim=-1)
            cols = torch.cat([keep, zeros_in_front], dim=1)[:, None, None, :]
            kernel3 = _masked_softmax_last(scores3, cols, lm_row)[..., :L]
        else:
            kernel3 = _masked_softmax_last(scores3, keep[:, None, None, :], lm_row)
        # The iteration multiplies the m x m kernel by itself ~18 times: in float32 an ill-conditioned kernel (an
        # untrained or a trained model alike) amplifies rounding so that two runtimes' GEMM kernels disagree by
        # 1e-4 on the logits. In float64 (m <= n_landmarks, so O(m^3) and cheap) they agree to float32 rounding.
        kernel2_pinv = self._pinv(kernel2, work_dtype)

        out = kernel1 @ (kernel2_pinv @ (kernel3 @ v))  # (B, h, L, d)
        out = out.transpose(1, 2).reshape(B, L, self.att_dim).to(x.dtype)
        y = self.out_proj(out) * keep.unsqueeze(-1).to(x.dtype)
        return y, (kernel1, kernel2_pinv, kernel3)

    def _pinv(self, kernel2: torch.Tensor, work_dtype: torch.dtype) -> torch.Tensor:
        """The pseudo-inverse of kernel2 (B, h, m, m), computed in float64."""
        # The iteration multiplies the m x m kernel by itself ~18 times: in float32 an ill-conditioned kernel (an
        # untrained or a trained model alike) amplifies rounding so that two runtimes' GEMM kernels disagree by
        # 1e-4 on the logits. In float64 (m <= n_landmarks, so O(m^3) and cheap) they agree to float32 rounding.
        shared = 1 if self.landmarks == "torchmil" else 0
        return moore_penrose_iter_pinv(kernel2.double(), self.pinv_iterations, shared).to(work_dtype)

    def _project(self, x: torch.Tensor, part: int) -> torch.Tensor:
        """q (part 0), k (1) or v (2) of tokens x (B, C, in_dim): (B, C, att_dim)."""
        if self.qkv is None:
            return x
        a = self.att_dim
        return linear_in_weight_dtype(x, self.qkv.weight[part * a : (part + 1) * a])

    def forward_chunked(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, chunk_size: int = 4096, length_bound: int = 0,
        norm: ChunkNorm | None = None, residual: bool = False,
    ) -> torch.Tensor:
        r"""``forward(x, mask)`` in O(chunk_size · m) working memory per head instead of O(L · m).

        The same attention, taken over chunks of at most ``chunk_size`` tokens: the landmarks are sums over
        chunks; :math:`\operatorname{softmax}(\tilde Q K^\top) V` is accumulated chunk by chunk with a running
        maximum and denominator (the online softmax of flash attention, exact up to rounding); the rows
        :math:`\operatorname{softmax}(Q \tilde K^\top)\,(\text{pinv} \cdot \text{kernel3}\,V)` are computed
        chunk by chunk. q, k and v are projected per chunk, so no (L, att_dim) projection and no (L, m) kernel
        is ever whole. Under ``torch.export`` the chunks are a ``scan`` (one ONNX ``Scan`` over a dynamic
        number of chunks: one artifact for every bag size), elsewhere a loop. The chunks of a bag of L tokens
        are ``ceil(L / chunk_size)`` of equal size (at most one padded slot each); a bag that fits one chunk
        runs :meth:`forward_att` itself. An exported graph loops over ``1 + ceil(L / chunk_size)`` chunks (a
        loop whose example length is 1 would be specialised to 1), or over ``1 + ceil(length_bound /
        chunk_size)``.

        Args:
            x: (B, L, in_dim) tokens.
            mask: (B, L) True / 1 = real token; None = all real.
            chunk_size: most tokens per chunk.
            length_bound: 0, or a bound L <= length_bound known as a size of the model's inputs, for an L
                computed from data (TransMIL's squared grid): an exported graph's chunk count then comes from it
                (torch.export cannot loop over a count computed from data).
            norm: a LayerNorm's (weight, bias, eps): the attention reads ``layer_norm(x)``, normalised chunk by
                chunk (a pre-norm layer then never holds the whole normalised sequence); None = x as it is.
            residual: return ``x + attention`` (needs in_dim == out_dim), added chunk by chunk, so that the
                caller's input can be freed once the chunks are read (an exported graph holds one (B, L, D)
                sequence less).

        Returns:
            y: (B, L, out_dim), equal to ``forward(x, mask)`` (of ``layer_norm(x)`` with ``norm``, plus x with
            ``residual``) to float rounding; 0 at padded positions (x there with ``residual``).
        """
        L = x.shape[1]
        exporting = is_exporting()
        n_chunks = self._chunk_count(L, chunk_size, length_bound, exporting)
        if not exporting and n_chunks <= 1:
            out = self.forward_att(_normalised(x, norm), mask)[0]
            return x + out if residual else out
        keep = as_bool_mask(mask, x)
        work_dtype = torch.promote_types(x.dtype, torch.float32)
        index, valid = self._chunk_index(L, n_chunks, x.device)
        k_land_scaled, right, lm_col, _ = self._chunked_factors(
            x, keep, index, valid, exporting, work_dtype, None, norm
        )
        if not torch.jit.is_scripting():
            if exporting:
                return self._scan_rows(x, keep, k_land_scaled, right, lm_col, index, valid, L, norm, residual)
        rows = [
            self._rows_step(x, keep, k_land_scaled, right, lm_col, index[c], valid[c], work_dtype, norm, residual)
            for c in range(n_chunks)
        ]
        return torch.cat(rows, dim=1)[:, :L]

    def forward_row_chunked(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, chunk_size: int = 4096, length_bound: int = 0,
        row: int = 0, need_att: bool = True, norm: ChunkNorm | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""One token's row of :meth:`forward_chunked` and its :meth:`exact_attention_row`, in one pass.

        For a model that reads one token of its last layer (TransMIL's class token): the landmarks and
        :math:`\text{pinv} \cdot \operatorname{softmax}(\tilde Q K^\top) V` need every token, the output only
        the row's query, so the other rows' queries, kernel rows and output projections are never computed.
        The exact attention's scores :math:`q_\text{row} \cdot k_j / \sqrt d` are taken from the keys each chunk
        projects anyway, so no (L, att_dim) key projection is ever whole either. A bag that fits one chunk
        runs :meth:`forward_att` and :meth:`exact_attention_row` themselves (outside an export).

        Args:
            x: (B, L, in_dim) tokens; mask: (B, L) True / 1 = real token, None = all real.
            chunk_size, length_bound: see :meth:`forward_chunked`.
            row: the token whose output is wanted (must be real in every bag).
            need_att: also compute the exact attention row (otherwise an empty tensor is returned for it).
            norm: as in :meth:`forward_chunked` (the attention reads ``layer_norm(x)``, chunk by chunk).

        Returns:
            y: (B, 1, out_dim), equal to ``forward(x, mask)[:, row : row + 1]`` to float rounding; attention
            (B, h, L) as :meth:`exact_attention_row` returns it, or an empty tensor without ``need_att``.
        """
        L = x.shape[1]
        exporting = is_exporting()
        n_chunks = self._chunk_count(L, chunk_size, length_bound, exporting)
        if not exporting and n_chunks <= 1:
            x = _normalised(x, norm)
            y = self.forward_att(x, mask)[0][:, row : row + 1]
            return y, self.exact_attention_row(x, mask, row) if need_att else x.new_zeros(0)
        keep = as_bool_mask(mask, x)
        work_dtype = torch.promote_types(x.dtype, torch.float32)
        index, valid = self._chunk_index(L, n_chunks, x.device)
        q_row: torch.Tensor | None = None
        if need_att:
            x_row = _normalised(x[:, row : row + 1], norm)
            q_row = self._split_heads(self._project(x_row, 0), work_dtype) * self.scale  # (B, h, 1, d)
        k_land_scaled, right, lm_col, row_scores = self._chunked_factors(
            x, keep, index, valid, exporting, work_dtype, q_row, norm
        )
        at_row = torch.full((1,), row, dtype=torch.long, device=x.device)
        y = self._rows_step(x, keep, k_land_scaled, right, lm_col, at_row, at_row >= 0, work_dtype, norm, False)
        if not need_att:
            return y, x.new_zeros(0)
        B = x.shape[0]
        scores = row_scores.reshape(B, self.n_heads, row_scores.shape[-1])[..., :L]  # (B, h, L)
        return y, _masked_softmax_last(scores, keep[:, None, :], keep.any(dim=1)[:, None, None])

    @staticmethod
    def _chunk_count(L: int, chunk_size: int, length_bound: int, exporting: bool) -> int:
        """Chunks of a bag of L tokens: ceil(L / chunk_size) when L is known; one more in an exported graph
        (torch.export specialises a loop of length 1, the example's, to exactly 1; the chunks are of equal size,
        so the extra one costs an iteration, not work), counted from ``length_bound`` when it is given."""
        if not exporting:
            return (L + chunk_size - 1) // chunk_size
        return 1 + ((length_bound if length_bound > 0 else L) + chunk_size - 1) // chunk_size

    @staticmethod
    def _chunk_index(L: int, n_chunks: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Token index (n, C) of each chunk's slots, clamped to L - 1, and valid (n, C): slot < L."""
        size = (L + n_chunks - 1) // n_chunks
        index = torch.arange(n_chunks * size, device=device).reshape(n_chunks, size)
        return index.clamp(max=L - 1), index < L

    def _chunked_factors(
        self, x: torch.Tensor, keep: torch.Tensor, index: torch.Tensor, valid: torch.Tensor, exporting: bool,
        work_dtype: torch.dtype, q_row: torch.Tensor | None, norm: ChunkNorm | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Steps 1 and 2 of :meth:`forward_chunked`, each one pass over the chunks (a scan when exporting), on
        the chunks of x normalised with ``norm`` (see :meth:`forward_chunked`).

        Returns:
            k_land_scaled (B, h, m, d), right = pinv @ softmax(q_land k^T) v (B, h, m, d), lm_col
            (B, 1, 1, m) bool, and the scores ``q_row @ k^T`` (B, h, R, n * C) of the extra queries ``q_row``
            (B, h, R, d) (empty without them).
        """
        B = x.shape[0]
        n_chunks = index.shape[0]
        m, segment, divisor, has_landmark, n_front = self._landmark_plan(keep, x, all_slots=True)
        h, d = self.n_heads, self.head_dim
        slots = torch.arange(m, device=x.device)

        # 1. landmark inputs: sums of each segment's tokens, chunk by chunk
        sums = torch.zeros(B, m, x.shape[2], dtype=x.dtype, device=x.device)
        sizes = torch.zeros(B, m, 1, dtype=x.dtype, device=x.device)
        # torch.export traces a scan; the nested ifs keep TorchScript from compiling it (it cannot)
        scanned = False
        if not torch.jit.is_scripting():
            if exporting:
                # L may be a size computed from data (TransMIL's squared grid): say what the scan may assume
                torch._check(x.shape[1] >= 1)
                torch._check(n_chunks >= 1)
                torch._check(index.shape[1] >= 1)
                sums, sizes = self._scan_landmark_sums(x, segment, slots, index, valid, sums, sizes, norm)
                scanned = True
        if not scanned:
            for c in range(n_chunks):
                sums, sizes = self._landmark_sums_step(x, segment, slots, index[c], valid[c], sums, sizes, norm)
        if self.landmarks == "torchmil":
            x_land = sums / divisor
        else:
            x_land = sums / sizes.clamp_min(1)  # (B, m, in_dim) segment means
        q_land = self._split_heads(self._project(x_land, 0), work_dtype) * self.scale
        k_land = self._split_heads(self._project(x_land, 1), work_dtype)
        lm_col = has_landmark[:, None, None, :]
        lm_row = has_landmark[:, None, :, None]
        kernel2 = _masked_softmax_last(q_land @ k_land.transpose(-1, -2), lm_col, lm_row)
        kernel2_pinv = self._pinv(kernel2, work_dtype)

        # 2. softmax(q_land k^T) v over all tokens, online; torchmil's front zero keys (score 0, value 0) as
        # the starting state: one column of logit log(P_b) in the denominator, nothing in the sum
        if self.landmarks == "torchmil":
            front = n_front > 0  # (B, 1)
            start = torch.log(n_front.clamp_min(1).to(work_dtype))
            running_max = torch.where(front, start, torch.full_like(start, -1e30)).reshape(B, 1, 1, 1)
            running_max = running_max.expand(B, h, m, 1).contiguous()
            running_sum = front.to(work_dtype).reshape(B, 1, 1, 1).expand(B, h, m, 1).contiguous()
        else:
            running_max = torch.full((B, h, m, 1), -1e30, dtype=work_dtype, device=x.device)
            running_sum = torch.zeros(B, h, m, 1, dtype=work_dtype, device=x.device)
        weighted = torch.zeros(B, h, m, d, dtype=work_dtype, device=x.device)
        row_scores = x.new_zeros(0)
        if not torch.jit.is_scripting():
            if scanned:
                running_max, running_sum, weighted, row_scores = self._scan_values(
                    x, keep, q_land, index, valid, running_max, running_sum, weighted, q_row, norm
                )
        if not scanned:
            per_chunk: list[torch.Tensor] = []
            for c in range(n_chunks):
                running_max, running_sum, weighted, scores_c = self._values_step(
                    x, keep, q_land, index[c], valid[c], running_max, running_sum, weighted, work_dtype, q_row, norm
                )
                per_chunk.append(scores_c)
            if q_row is not None:
                row_scores = torch.cat(per_chunk, dim=-1)
        kernel3_v = weighted / running_sum.clamp_min(1e-30) * lm_row.to(work_dtype)  # (B, h, m, d)
        return k_land * self.scale, kernel2_pinv @ kernel3_v, lm_col, row_scores

    def _landmark_sums_step(
        self, x: torch.Tensor, segment: torch.Tensor, slots: torch.Tensor, index: torch.Tensor,
        valid: torch.Tensor, sums: torch.Tensor, sizes: torch.Tensor, norm: ChunkNorm | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add one chunk's tokens (``index`` (C,), ``valid`` (C,)) to the segment sums (B, m, in) and sizes."""
        seg = torch.where(valid, segment.index_select(1, index), torch.full_like(index, -1))
        assign = (seg.unsqueeze(-1) == slots).to(x.dtype)  # (B, C, m)
        x_c = _take_chunk(x, index, norm)
        return sums + assign.transpose(1, 2) @ x_c, sizes + assign.sum(dim=1).unsqueeze(-1)

    def _values_step(
        self, x: torch.Tensor, keep: torch.Tensor, q_land: torch.Tensor, index: torch.Tensor, valid: torch.Tensor,
        running_max: torch.Tensor, running_sum: torch.Tensor, weighted: torch.Tensor, work_dtype: torch.dtype,
        q_row: torch.Tensor | None = None, norm: ChunkNorm | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One chunk of the online softmax(q_land k^T) v: (B, h, m, 1) maximum and sum, (B, h, m, d) sum; and
        the chunk's scores ``q_row @ k^T`` (B, h, R, C) of the extra queries (empty without them)."""
        x_c = _take_chunk(x, index, norm)
        k = self._split_heads(self._project(x_c, 1), work_dtype)
        v = self._split_heads(self._project(x_c, 2), work_dtype)
        keep_c = keep.index_select(1, index) & valid
        scores = q_land @ k.transpose(-1, -2) + (~keep_c).to(work_dtype)[:, None, None, :] * -1e30
        new_max = torch.maximum(running_max, scores.amax(dim=-1, keepdim=True))
        decay = torch.exp(running_max - new_max)
        e = torch.exp(scores - new_max)
        row_scores = q_row @ k.transpose(-1, -2) if q_row is not None else x.new_zeros(0)
        return new_max, running_sum * decay + e.sum(dim=-1, keepdim=True), weighted * decay + e @ v, row_scores

    def _rows_step(
        self, x: torch.Tensor, keep: torch.Tensor, k_land_scaled: torch.Tensor, right: torch.Tensor,
        lm_col: torch.Tensor, index: torch.Tensor, valid: torch.Tensor, work_dtype: torch.dtype,
        norm: ChunkNorm | None = None, residual: bool = False,
    ) -> torch.Tensor:
        """One chunk's outputs (B, C, out_dim): softmax(q k_land^T) @ right, heads merged, projected (of the
        chunk normalised with ``norm``; plus the chunk itself with ``residual``)."""
        x_c = x.index_select(1, index)
        keep_c = keep.index_select(1, index) & valid
        x_n = _normalised(x_c, norm)
        q = self._split_heads(self._project(x_n, 0), work_dtype)
        kernel1 = _masked_softmax_last(q @ k_land_scaled.transpose(-1, -2), lm_col, keep_c[:, None, :, None])
        out = (kernel1 @ right).transpose(1, 2)
        out = out.reshape(out.shape[0], out.shape[1], self.att_dim).to(x.dtype)
        out = self.out_proj(out) * keep_c.unsqueeze(-1).to(x.dtype)
        return x_c + out if residual else out

    def _scan_landmark_sums(
        self, x: torch.Tensor, segment: torch.Tensor, slots: torch.Tensor, index: torch.Tensor, valid: torch.Tensor,
        sums: torch.Tensor, sizes: torch.Tensor, norm: ChunkNorm | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_landmark_sums_step` over every chunk, as a ``scan`` (for torch.export)."""
        from torch._higher_order_ops.scan import scan

        def step(carry, chunk):  # (under no_grad: an export never trains, and scan would trace a backward)
            sums_sizes = self._landmark_sums_step(x, segment, slots, chunk[0], chunk[1], *carry, norm=norm)
            return sums_sizes, chunk[0][:1].clone()

        with torch.no_grad():
            (sums, sizes), _ = scan(step, (sums, sizes), (index, valid))
        return sums, sizes

    def _scan_values(
        self, x: torch.Tensor, keep: torch.Tensor, q_land: torch.Tensor, index: torch.Tensor, valid: torch.Tensor,
        running_max: torch.Tensor, running_sum: torch.Tensor, weighted: torch.Tensor, q_row: torch.Tensor | None,
        norm: ChunkNorm | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`_values_step` over every chunk, as a ``scan`` (for torch.export); the extra queries' scores
        (B, h, R, n * C) are the scan's per-chunk outputs."""
        from torch._higher_order_ops.scan import scan

        def step(carry, chunk):
            *state, row_scores = self._values_step(
                x, keep, q_land, chunk[0], chunk[1], *carry, q_land.dtype, q_row, norm
            )
            return tuple(state), (row_scores if q_row is not None else chunk[0][:1].clone())

        with torch.no_grad():
            (running_max, running_sum, weighted), per_chunk = scan(
                step, (running_max, running_sum, weighted), (index, valid)
            )
        if q_row is None:
            return running_max, running_sum, weighted, x.new_zeros(0)
        n, B, h, R, C = per_chunk.shape  # (n, B, h, R, C) -> (B, h, R, n * C), chunk-major like the tokens
        return running_max, running_sum, weighted, per_chunk.permute(1, 2, 3, 0, 4).reshape(B, h, R, n * C)

    def _scan_rows(
        self, x: torch.Tensor, keep: torch.Tensor, k_land_scaled: torch.Tensor, right: torch.Tensor,
        lm_col: torch.Tensor, index: torch.Tensor, valid: torch.Tensor, L: int, norm: ChunkNorm | None,
        residual: bool,
    ) -> torch.Tensor:
        """:meth:`_rows_step` over every chunk, as a ``scan`` (for torch.export): (B, L, out_dim)."""
        from torch._higher_order_ops.scan import scan

        def step(carry, chunk):
            rows = self._rows_step(
                x, keep, k_land_scaled, right, lm_col, chunk[0], chunk[1], right.dtype, norm, residual
            )
            return (carry[0].clone(),), rows

        with torch.no_grad():
            _, rows = scan(step, (index[0, :1],), (index, valid))  # rows (n, B, C, out_dim)
        B = x.shape[0]
        return rows.transpose(0, 1).reshape(B, rows.shape[0] * rows.shape[2], rows.shape[3])[:, :L]

    def exact_attention_row(self, x: torch.Tensor, mask: torch.Tensor | None = None, row: int = 0) -> torch.Tensor:
        r"""Exact softmax attention of one token's query over all real tokens, per head, in O(L) memory.

        .. math:: a_{h,j} = \operatorname{softmax}_{j \in \text{real}}\big(q_{h,\text{row}} \cdot k_{h,j} /
                  \sqrt{d}\big)

        This is what the Nyström factors approximate for that row. Unlike the approximation (whose
        pseudo-inverse need not converge for an ill-conditioned landmark kernel, so that a row can come out
        all negative), it is a true distribution for any weights: the attention a model can export.

        Args:
            x: (B, L, in_dim) the tokens this layer attends over (after its input norm).
            mask: (B, L) True / 1 = real token; None = all real.
            row: index of the query token (e.g. 0, a class token).

        Returns:
            (B, h, L) float32 at least: non-negative, sums to 1 over the real tokens, 0 on padding; a bag
            without real tokens gives 0.
        """
        keep = as_bool_mask(mask, x)
        work_dtype = torch.promote_types(x.dtype, torch.float32)
        q = self._split_heads(self._project(x[:, row : row + 1], 0), work_dtype) * self.scale  # (B, h, 1, d)
        k = self._split_heads(self._project(x, 1), work_dtype)  # (B, h, L, d)
        scores = (q @ k.transpose(-1, -2)).squeeze(2)  # (B, h, L)
        return _masked_softmax_last(scores, keep[:, None, :], keep.any(dim=1)[:, None, None])

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, return_att: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Attend over each bag's real tokens.

        Args:
            x: (B, L, in_dim) tokens.
            mask: (B, L) True / 1 = real token (bool or uint8); None = all real.
            return_att: also return the attention, as its three Nyström factors (the L x L matrix is never
                formed; :func:`nystrom_attention_rows` gives any rows of it, ``k1 @ pinv @ k3`` all of it).

        Returns:
            y: (B, L, out_dim), 0 at padded positions; with ``return_att`` also ``(kernel1 (B, h, L, m),
            kernel2_pinv (B, h, m, m), kernel3 (B, h, m, L))`` (float32 at least), with m = min(n_landmarks,
            L) (``n_landmarks`` with ``landmarks="torchmil"``); rows of padded tokens and unused landmarks
            are 0.
        """
        y, att = self.forward_att(x, mask)
        if return_att:
            return y, att
        return y

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, out_dim={self.out_dim}, att_dim={self.att_dim}, n_heads={self.n_heads}, "
            f"learn_weights={self.learn_weights}, n_landmarks={self.n_landmarks}, "
            f"pinv_iterations={self.pinv_iterations}, landmarks={self.landmarks!r}"
        )
