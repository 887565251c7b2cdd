"""One adjacency abstraction for every graph model: a batched edge list.

Training keeps the reference's API: ``collate_fn`` gives ``adj`` as a dense or sparse (B, N, N) tensor. Serving
never holds an N x N matrix: an exported graph model takes ``edge_index`` (B, 2, E) int64 and ``edge_weight``
(B, E) float32, the COO entries of each bag's adjacency (row 0 = row index i, row 1 = column index j of
:math:`A_{ij}`, indices local to the bag), padded to the batch's largest edge count with edges of weight 0.
Graph models turn whichever form they get into that edge list (:func:`resolve_edges`) and compute only with
edge-list operations (:func:`propagate`, :func:`edge_softmax`, :func:`node_degree`), so both forms give the same
outputs and memory is O(N k + E), never O(N^2).

An edge of weight 0 is no edge. Edges that touch a padded instance are dropped (weight 0) when a mask is given.
"""

from __future__ import annotations

import torch

from milsdk.nn.masked import as_bool_mask

__all__ = ["edge_list_from_adj", "edge_softmax", "node_degree", "propagate", "resolve_edges", "scatter_add_rows"]

#: feature columns scattered at once by :func:`propagate` and :func:`scatter_add_rows`.
SCATTER_BLOCK_COLUMNS = 64


def edge_list_from_adj(adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batched edge list of a dense or sparse (B, N, N) adjacency (training-side conversion, eager only:
    the edge count is data; exported models take the edge list itself).

    Args:
        adj: (B, N, N) dense or sparse COO adjacency, any float dtype.

    Returns:
        edge_index (B, 2, E) int64 and edge_weight (B, E) float32, E = the largest number of non-zero entries
        of a bag; each bag's edges in row-major order, then padding edges (0, 0) of weight 0.
    """
    if adj.is_sparse:
        adj = adj.coalesce()
        indices, values = adj.indices(), adj.values()
        keep = values != 0
        batch, rows, cols, weights = indices[0][keep], indices[1][keep], indices[2][keep], values[keep]
    else:
        batch, rows, cols = torch.nonzero(adj).unbind(1)
        weights = adj[batch, rows, cols]
    B = adj.shape[0]
    counts = torch.bincount(batch, minlength=B)
    E = int(counts.max()) if counts.numel() else 0
    # position of each edge within its bag (edges come sorted by batch index)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(batch.numel(), device=batch.device) - starts[batch]
    edge_index = torch.zeros(B, 2, E, dtype=torch.long, device=adj.device)
    edge_weight = torch.zeros(B, E, dtype=torch.float32, device=adj.device)
    edge_index[batch, 0, slot] = rows
    edge_index[batch, 1, slot] = cols
    edge_weight[batch, slot] = weights.to(torch.float32)
    return edge_index, edge_weight


def resolve_edges(
    X: torch.Tensor,
    adj: torch.Tensor | None = None,
    edge_index: torch.Tensor | None = None,
    edge_weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The edge list a graph model computes with, from either form it may be given.

    Args:
        X: (B, N, ...) the instances (for the device and the node count).
        adj: (B, N, N) dense or sparse adjacency (the training form), or None.
        edge_index: (B, 2, E) int64 edge list (the serving form), or None.
        edge_weight: (B, E) weights of ``edge_index`` (None = 1 for every edge).
        mask: (B, N) True / 1 = real instance; edges touching a padded instance get weight 0.

    Returns:
        edge_index (B, 2, E) int64, edge_weight (B, E) float32 (at least).

    Raises:
        ValueError: neither form given.
    """
    if edge_index is None:
        if adj is None:
            raise ValueError("a graph model needs adj (B, N, N) or edge_index (B, 2, E); got neither")
        if torch.jit.is_scripting():
            # a dense adjacency's edge count is data: scripted (deployed) models take the edge list itself
            raise ValueError("a scripted graph model takes edge_index (B, 2, E), not adj")
        else:
            if adj.dim() != 3 or adj.shape[1] != adj.shape[2] or adj.shape[1] != X.shape[1]:
                # e.g. a (B, N) mask passed positionally into the adj slot (the reference's
                # ProbSmoothABMIL.predict)
                raise ValueError(
                    f"adj must be (B, N, N) with N = {X.shape[1]} instances, got shape {tuple(adj.shape)}"
                )
            edge_index, edge_weight = edge_list_from_adj(adj)
    edge_index = edge_index.to(device=X.device, dtype=torch.long)
    work_dtype = torch.promote_types(X.dtype, torch.float32)
    if edge_weight is None:
        weight = torch.ones(edge_index.shape[0], edge_index.shape[2], dtype=work_dtype, device=X.device)
    else:
        weight = edge_weight.to(device=X.device, dtype=work_dtype)
    if mask is not None:
        keep = as_bool_mask(mask, X).to(work_dtype)
        weight = weight * keep.gather(1, edge_index[:, 0]) * keep.gather(1, edge_index[:, 1])
    return edge_index, weight


def propagate(
    X: torch.Tensor,
    edge_index: torch.Tensor,
    edge_weight: torch.Tensor,
    block_columns: int = SCATTER_BLOCK_COLUMNS,
) -> torch.Tensor:
    r"""Sparse adjacency times features, batched: :math:`Y_{b,i} = \sum_{e:\, \text{row}_e = i} w_{b,e}\,
    X_{b, \text{col}_e}` (= ``adj @ X`` for the dense adjacency of the same entries).

    Args:
        X: (B, N, D) node features.
        edge_index: (B, 2, E) int64, rows and columns.
        edge_weight: (B, E) weights (padding edges weigh 0).
        block_columns: feature columns whose messages are built and scattered at once.

    Returns:
        (B, N, D) in X's dtype, accumulated in edge order (:func:`scatter_add_rows`: the same sums on every
        runtime and thread count), one block of ``block_columns`` feature columns at a time (peak memory O(E * 64), not O(E * D)).
    """
    B, N, D = X.shape[0], X.shape[1], X.shape[2]
    work_dtype = torch.promote_types(X.dtype, torch.float32)
    offset = (torch.arange(B, device=X.device) * N).reshape(B, 1)
    rows = (edge_index[:, 0] + offset).reshape(-1)
    cols = (edge_index[:, 1] + offset).reshape(-1)
    flat = X.reshape(B * N, D).to(work_dtype)
    weight = edge_weight.reshape(-1, 1).to(work_dtype)
    # column blocks: the messages of one block at a time, never an E x D buffer
    parts: list[torch.Tensor] = []
    for start in range(0, D, block_columns):
        messages = flat[:, start : start + block_columns].index_select(0, cols) * weight
        parts.append(_scatter_add_block(messages, rows, B * N))
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    return out.reshape(B, N, D).to(X.dtype)


def _scatter_add_block(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """out (n_rows, C) with out[r] = sum of values[m] (M, C) over m with rows[m] = r, as a scatter_add along
    dim 0 (ONNX ScatterElements, which onnxruntime adds sequentially)."""
    index = rows.unsqueeze(1).expand(values.shape[0], values.shape[1])
    out = torch.zeros(n_rows, values.shape[1], dtype=values.dtype, device=values.device)
    return out.scatter_add(0, index, values)


def scatter_add_rows(
    values: torch.Tensor, rows: torch.Tensor, n_rows: int, block_columns: int = SCATTER_BLOCK_COLUMNS
) -> torch.Tensor:
    r"""Row sums by index, deterministic in every runtime: :math:`Y_r = \sum_{m:\, \text{rows}_m = r} V_m`.

    Use this instead of ``index_add``: torch.onnx exports ``index_add`` as ScatterND with ``reduction="add"``,
    and onnxruntime's multi-threaded ScatterND races on duplicate indices (measured on onnxruntime 1.32: 2,000
    x 64 rows from 16,000 updates, every run with 2 threads lost updates, max error 4.1; exact with 1 thread).
    ``scatter_add`` exports as ScatterElements, which onnxruntime adds in index order on any thread count. The
    columns go in blocks of :data:`SCATTER_BLOCK_COLUMNS`, so the expanded index costs M x 64, not M x C.

    Args:
        values: (M,) or (M, C).
        rows: (M,) int64 target rows in [0, n_rows).
        n_rows: R.
        block_columns: columns scattered at once.

    Returns:
        (R,) or (R, C) in values' dtype.
    """
    if values.dim() == 1:
        return torch.zeros(n_rows, dtype=values.dtype, device=values.device).scatter_add(0, rows, values)
    C = values.shape[1]
    parts: list[torch.Tensor] = []
    for start in range(0, C, block_columns):
        parts.append(_scatter_add_block(values[:, start : start + block_columns], rows, n_rows))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def node_degree(edge_index: torch.Tensor, edge_weight: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """Weighted row degree :math:`d_i = \\sum_j A_{ij}` of every node.

    Args:
        edge_index: (B, 2, E); edge_weight: (B, E); n_nodes: N.

    Returns:
        (B, N) float (edge_weight's dtype).
    """
    B = edge_index.shape[0]
    out = torch.zeros(B, n_nodes, dtype=edge_weight.dtype, device=edge_weight.device)
    return out.scatter_add(1, edge_index[:, 0], edge_weight)


def edge_softmax(scores: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor, n_nodes: int) -> torch.Tensor:
    r"""Softmax of edge scores over each row's edges: :math:`a_e = \exp(s_e) / \sum_{e':\,\text{row}_{e'} =
    \text{row}_e} \exp(s_{e'})`, over the edges of non-zero weight only (others get 0; a row without edges
    gets nothing, never NaN).

    Args:
        scores: (B, E) or (B, E, H) edge scores.
        edge_index: (B, 2, E); edge_weight: (B, E) (an edge of weight 0 is no edge); n_nodes: N.

    Returns:
        Same shape as ``scores``, float32 at least.
    """
    work_dtype = torch.promote_types(scores.dtype, torch.float32)
    s = scores.to(work_dtype)
    squeeze = s.dim() == 2
    if squeeze:
        s = s.unsqueeze(-1)
    B, E, H = s.shape[0], s.shape[1], s.shape[2]
    valid = (edge_weight != 0).unsqueeze(-1)
    s = s.masked_fill(~valid, -3.4028234663852886e38)
    rows = edge_index[:, 0].unsqueeze(-1).expand(B, E, H)
    row_max = torch.full((B, n_nodes, H), -3.4028234663852886e38, dtype=work_dtype, device=s.device)
    row_max = row_max.scatter_reduce(1, rows, s, reduce="amax", include_self=True)
    exp = torch.exp(s - row_max.gather(1, rows)) * valid.to(work_dtype)
    denom = torch.zeros(B, n_nodes, H, dtype=work_dtype, device=s.device).scatter_add(1, rows, exp)
    out = exp / denom.gather(1, rows).clamp_min(1.1754943508222875e-38)
    return out.squeeze(-1) if squeeze else out
