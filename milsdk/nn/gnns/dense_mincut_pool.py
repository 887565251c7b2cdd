"""Min-cut pooling (Bianchi, Grattarola, Alippi, ICML 2020, "Spectral Clustering with Graph Neural Networks for
Graph Pooling"), computed on the edge list: O(N K + E K) memory, never an N x N matrix."""

from __future__ import annotations

import torch

from milsdk.nn.adjacency import node_degree, propagate, resolve_edges
from milsdk.nn.masked import as_bool_mask

__all__ = ["dense_mincut_pool", "diag", "trace"]


def trace(x: torch.Tensor) -> torch.Tensor:
    """Trace of each matrix of a batch.

    Args:
        x: (B, n, n).

    Returns:
        (B,) the sums of the diagonals.
    """
    return torch.diagonal(x, dim1=-2, dim2=-1).sum(-1)


def diag(x: torch.Tensor) -> torch.Tensor:
    """Diagonal matrices from a batch of vectors.

    Args:
        x: (B, n).

    Returns:
        (B, n, n) with ``x[b]`` on the diagonal of matrix b, 0 elsewhere.
    """
    return torch.diag_embed(x)


def dense_mincut_pool(
    x: torch.Tensor,
    adj: torch.Tensor | None,
    s: torch.Tensor,
    mask: torch.Tensor | None = None,
    temp: float = 1.0,
    edge_index: torch.Tensor | None = None,
    edge_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Pool N nodes into K clusters with soft assignments, and the two min-cut regularisers.

    With :math:`S = \operatorname{softmax}_K(s / \text{temp})` (rows of padded nodes set to 0, so they carry no
    cluster mass) and :math:`D = \operatorname{diag}(A \mathbf{1})`:

    .. math::
        X' = S^\top X, \qquad A' = S^\top (A S) \;(\text{the product } A S \text{ on the edge list}),

        \mathcal{L}_{cut} = -\frac{\operatorname{tr}(S^\top A S)}{\operatorname{tr}(S^\top D S)}
            = -\frac{\operatorname{tr}(A')}{\sum_i d_i \lVert S_i \rVert^2}, \qquad
        \mathcal{L}_{o} = \Big\lVert \frac{S^\top S}{\lVert S^\top S \rVert_F} - \frac{I_K}{\sqrt K} \Big\rVert_F,

    both averaged over the batch; finally A' gets a zero diagonal and the symmetric normalisation
    :math:`D'^{-1/2} A' D'^{-1/2}`. A bag without edges (or without real nodes) gives a min-cut loss of 0 and
    finite outputs, where the dense reference divides 0 by 0.

    Args:
        x: (B, N, D) node features (or (N, D) for one graph).
        adj: (B, N, N) dense or sparse adjacency, or None when the edge list is given.
        s: (B, N, K) cluster logits.
        mask: (B, N) True / 1 = real node.
        temp: softmax temperature.
        edge_index: (B, 2, E) int64 edge list; edge_weight: (B, E) its weights.

    Returns:
        x_pool (B, K, D), adj_pool (B, K, K), mincut_loss (scalar), ortho_loss (scalar).
    """
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if s.dim() == 2:
        s = s.unsqueeze(0)
    if adj is not None and adj.dim() == 2:
        adj = adj.unsqueeze(0)
    if edge_index is not None and edge_index.dim() == 2:
        edge_index = edge_index.unsqueeze(0)
    if edge_weight is not None and edge_weight.dim() == 1:
        edge_weight = edge_weight.unsqueeze(0)
    edge_index, edge_weight = resolve_edges(x, adj, edge_index, edge_weight, mask)
    n_nodes = x.shape[1]
    k = s.shape[-1]

    s = torch.softmax(s / temp, dim=-1)
    if mask is not None:
        m = as_bool_mask(mask, x).unsqueeze(-1)
        x = x * m.to(x.dtype)
        s = s * m.to(s.dtype)
    st = s.transpose(1, 2)
    x_pool = torch.bmm(st, x)
    adj_pool = torch.bmm(st, propagate(s, edge_index, edge_weight))

    eye = torch.eye(k, dtype=s.dtype, device=s.device)
    mincut_num = (adj_pool * eye).sum(dim=(1, 2))
    degree = node_degree(edge_index, edge_weight, n_nodes).to(s.dtype)
    mincut_den = (degree * (s * s).sum(-1)).sum(-1)
    mincut_loss = -(mincut_num / mincut_den.clamp_min(1.1754943508222875e-38)).mean()

    ss = torch.bmm(st, s)
    ss_norm = torch.linalg.matrix_norm(ss, keepdim=True).clamp_min(1.1754943508222875e-38)
    ortho_loss = torch.linalg.matrix_norm(ss / ss_norm - eye / torch.linalg.matrix_norm(eye)).mean()

    adj_pool = adj_pool * (1.0 - eye)
    # the clamp keeps sqrt's gradient finite for a cluster without edges (its row is 0 either way)
    d = adj_pool.sum(-1).clamp_min(1.1754943508222875e-38).sqrt().unsqueeze(1) + 1e-15
    adj_pool = adj_pool / d / d.transpose(1, 2)
    return x_pool, adj_pool, mincut_loss, ortho_loss
