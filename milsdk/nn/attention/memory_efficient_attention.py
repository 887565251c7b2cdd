"""Exact masked softmax attention in memory linear in the number of keys (query-chunked), in eager PyTorch,
TorchScript and the exported ONNX graph alike.

Softmax attention over a bag of N tokens needs an N x N score matrix if computed in one go: 6.4 GB per head
for a 40,000-patch slide. Splitting the queries into chunks of R rows keeps only an R x N block alive at a
time (Rabe & Staats, 2021, "Self-attention Does Not Need O(n^2) Memory", use the same idea; here only the
queries are chunked, so the softmax over the keys stays one exact operation per row).

Three execution paths, one result:

- eager PyTorch: a Python loop over query chunks, each one fused ``scaled_dot_product_attention`` call (its
  CPU / CUDA kernels also keep the backward pass linear in memory);
- TorchScript: the same loop, compiled (``torch.jit.script`` keeps the number of chunks dynamic);
- ``torch.export`` / ``torch.onnx.export(dynamo=True)``: a Python loop over a symbolic number of chunks cannot
  be traced, so the chunks go through ``torch.scan`` (a higher-order op), which the ONNX exporter writes as an
  ONNX ``Scan`` over query chunks: the graph holds one R x N block per step, never N x N, at every N. No custom
  op or translation table is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_CHUNK_SIZE", "memory_efficient_attention"]

#: query rows (summed over heads) per chunk: one chunk's score block holds B x DEFAULT_CHUNK_SIZE x Nk floats.
DEFAULT_CHUNK_SIZE = 1024


@torch.jit.unused
def _exporting() -> bool:
    """True while torch.export / the dynamo ONNX exporter traces the model (never called by TorchScript)."""
    return bool(torch.compiler.is_exporting())


def _attend_block(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T + bias) v for one query block, written with plain ops (q already scaled).

    q (B, H, R, d), k (B, H, Nk, d), v (B, H, Nk, dv), bias (B, 1, 1, Nk) -> (B, H, R, dv).
    """
    scores = q @ k.transpose(-1, -2) + bias
    return torch.softmax(scores, dim=-1) @ v


@torch.jit.unused
def _scan_chunks(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, rows: int
) -> torch.Tensor:
    """The query-chunk loop as ``torch.scan``, for torch.export (the ONNX exporter emits an ONNX Scan)."""
    from torch._higher_order_ops.scan import scan  # prototype API: imported only on the export path

    Nq = q.shape[2]
    if isinstance(Nq, int) and Nq <= rows:
        # A static, small query count (e.g. one class token): one block, no loop.
        return _attend_block(q, k, v, bias)
    # One chunk more than needed, so that the chunk count is >= 2 for every N: an example bag that fits in one
    # chunk would otherwise make torch.export specialise the count to 1 (and guard N <= rows).
    n_chunks = (Nq + rows - 1) // rows + 1
    # Chunks are gathered by index rather than by padding and reshaping: splitting a symbolic axis into
    # (n_chunks, rows) makes torch.export emit divisibility guards it cannot prove. Rows past Nq repeat the
    # last query and are dropped below.
    device = q.device
    index = torch.arange(n_chunks, device=device)[:, None] * rows + torch.arange(rows, device=device)[None, :]
    index = index.clamp_max(Nq - 1)
    chunks = q[:, :, index].permute(2, 0, 1, 3, 4)  # (n_chunks, B, H, rows, d)
    # The scan body may not take aliased inputs, and k, v are often views of one projection output.
    k, v, bias = k.clone(), v.clone(), bias.clone()

    def step(carry: torch.Tensor, q_chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return carry.clone(), _attend_block(q_chunk, k, v, bias)

    _, out = scan(step, q.new_zeros(1), chunks)  # (n_chunks, B, H, rows, dv)
    position = torch.arange(Nq, device=device)
    return out[position // rows, :, :, position % rows].permute(1, 2, 0, 3)  # (B, H, Nq, dv)


def _loop_chunks(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, rows: int, dropout_p: float
) -> torch.Tensor:
    """The query-chunk loop for eager PyTorch and TorchScript (fused SDPA per chunk; q already scaled)."""
    Nq = q.shape[2]
    outs: list[torch.Tensor] = []
    for start in range(0, Nq, rows):
        outs.append(
            F.scaled_dot_product_attention(
                q[:, :, start : start + rows], k, v, attn_mask=bias, dropout_p=dropout_p, scale=1.0
            )
        )
    if len(outs) == 0:
        return q.new_zeros((q.shape[0], q.shape[1], 0, v.shape[3]))
    return torch.cat(outs, dim=2)


def memory_efficient_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    r"""Exact multi-head softmax attention over the real keys, computed in query chunks.

    .. math::
        \operatorname{out}_{bhi} = \sum_{j \in \text{real}(b)}
        \operatorname{softmax}_{j \in \text{real}(b)}\!\Big(\frac{q_{bhi}^\top k_{bhj}}{\sqrt d}\Big)\, v_{bhj}

    Masked keys get the finite float32 minimum as score (never -inf), so their weight is exactly 0 and a bag's
    outputs do not depend on its padding; a query whose bag has no real key gets 0 (never NaN). Scores and
    softmax are computed in float32 at least; the output has v's dtype.

    Memory: one chunk of ``rows = max(1, chunk_size // H)`` queries per head is alive at a time, i.e. a
    (B, H, rows, Nk) score block of about ``B * chunk_size * Nk`` floats: linear in Nk, whatever Nq is. This
    holds in eager mode, under TorchScript and in the ONNX graph exported with ``torch.onnx.export(dynamo=True)``
    (see the module docstring).

    Args:
        q: (B, H, Nq, d) queries (unscaled).
        k: (B, H, Nk, d) keys.
        v: (B, H, Nk, dv) values.
        key_mask: (B, Nk) bool or 0/1, True = real key; None = all real.
        chunk_size: query rows per chunk, summed over the H heads.
        dropout_p: dropout on the attention weights (eager / TorchScript training only; pass 0 in eval).

    Returns:
        (B, H, Nq, dv).
    """
    work_dtype = torch.promote_types(q.dtype, torch.float32)
    H, d = q.shape[1], q.shape[3]
    rows = max(1, chunk_size // H)
    qs = q.to(work_dtype) * (float(d) ** -0.5)
    kw = k.to(work_dtype)
    vw = v.to(work_dtype)
    if key_mask is None:
        keep = torch.ones((k.shape[0], k.shape[2]), dtype=torch.bool, device=k.device)
    else:
        keep = key_mask if key_mask.dtype == torch.bool else key_mask != 0
        keep = keep.to(k.device)
    # float32 minimum as a literal: TorchScript has no torch.finfo.
    bias = torch.zeros(keep.shape, dtype=work_dtype, device=k.device).masked_fill(
        ~keep, -3.4028234663852886e38
    )[:, None, None, :]
    has_key = keep.any(dim=1).to(work_dtype)[:, None, None, None]

    # Nested on purpose: TorchScript skips compiling the body of a bare ``if not is_scripting()``, and only
    # then never sees the export path (merging the two tests makes scripting fail).
    if not torch.jit.is_scripting():  # noqa: SIM102
        if _exporting():
            out = _scan_chunks(qs, kw, vw, bias, rows)
            return (out * has_key).to(v.dtype)
    out = _loop_chunks(qs, kw, vw, bias, rows, dropout_p)
    return (out * has_key).to(v.dtype)
