"""Neighbour-constrained self-attention over a bag's graph (Fourkioti et al., ICLR 2024, "CAMIL: Context-Aware
Multiple Instance Learning for Cancer Detection and Subtyping in Whole Slide Images"), on edge lists."""

from __future__ import annotations

import torch

from milsdk.nn.adjacency import edge_softmax, propagate, resolve_edges

__all__ = ["NeighbourAttention"]


class NeighbourAttention(torch.nn.Module):
    r"""Self-attention in which each instance attends only to its neighbours in the bag's graph.

    With :math:`q_i = W_q x_i`, :math:`k_j = W_k x_j`, :math:`v_j = W_v x_j` (bias-free, as in the reference)
    and the adjacency weights :math:`a_{ij}`, for every edge :math:`(i, j)` of non-zero weight

    .. math::
        e_{ij} = a_{ij}\, \frac{q_i^\top k_j}{\sqrt{d}},\qquad
        \alpha_{ij} = \frac{\exp e_{ij}}{\sum_{j' \in \mathcal N(i)} \exp e_{ij'}},\qquad
        l_i = \sum_{j \in \mathcal N(i)} \alpha_{ij}\, v_j

    (CAMIL, section 4, the neighbour-constrained attention module; :math:`d` = ``att_dim``). Scores exist only
    on edges and the softmax runs over each node's own edges (:func:`~milsdk.nn.adjacency.edge_softmax`), so
    time and memory are O(E d): no N x N matrix. A node without edges (isolated, or padded) gets
    :math:`l_i = 0`.

    The reference (``torchmil.models.camil.CAMILSelfAttention``) densifies the adjacency, sums the edge scores
    of row i into one node score and softmaxes it over the whole bag, :math:`l_i = \operatorname{softmax}_i
    (\sum_j a_{ij} q_i^\top k_j / \sqrt d)\, v_i`: an O(N^2) gate of the node's own value that shrinks as
    1/N with the bag size, not attention over the neighbours. This block computes the paper's form;
    :class:`~milsdk.nn.attention.CAMILSelfAttention` computes the reference's, on the edge list.

    Masking: edges touching a padded instance weigh 0 (:func:`~milsdk.nn.adjacency.resolve_edges`), so real
    outputs never depend on padding; padded outputs are 0.

    Args:
        in_dim: instance size D (the values keep it: :math:`W_v` is D x D).
        att_dim: query / key size d.
    """

    def __init__(self, in_dim: int, att_dim: int = 512) -> None:
        super().__init__()
        self.in_dim, self.att_dim = in_dim, att_dim
        self.scale = float(att_dim) ** -0.5
        self.qk = torch.nn.Linear(in_dim, 2 * att_dim, bias=False)
        self.v = torch.nn.Linear(in_dim, in_dim, bias=False)

    def attend_edges(
        self, X: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention on a resolved edge list (what models call after :func:`resolve_edges`).

        Args:
            X: (B, N, in_dim) instances.
            edge_index: (B, 2, E) int64 local (row, column) indices.
            edge_weight: (B, E) weights; an edge of weight 0 is no edge.

        Returns:
            L: (B, N, in_dim) in X's dtype; alpha: (B, E) float32 attention of each edge (0 on absent edges,
            sums to 1 over each node's edges).
        """
        N = X.shape[1]
        work_dtype = torch.promote_types(X.dtype, torch.float32)
        scores = self._edge_scores(X, edge_index, work_dtype) * edge_weight.to(work_dtype)
        alpha = edge_softmax(scores, edge_index, edge_weight, N)
        L = propagate(self.v(X).to(work_dtype), edge_index, alpha)
        return L.to(X.dtype), alpha

    def _edge_scores(
        self, X: torch.Tensor, edge_index: torch.Tensor, work_dtype: torch.dtype
    ) -> torch.Tensor:
        """(B, E) scaled dot products q_row . k_col. A function of its own so that the (E, d) gathers are
        freed before the aggregation; the dot product is a batched matmul, which forms no third (E, d)
        tensor."""
        B, N = X.shape[0], X.shape[1]
        q, k = self.qk(X).to(work_dtype).chunk(2, dim=-1)
        offset = (torch.arange(B, device=X.device) * N).reshape(B, 1)
        rows = (edge_index[:, 0] + offset).reshape(-1)
        cols = (edge_index[:, 1] + offset).reshape(-1)
        q_rows = q.reshape(B * N, self.att_dim).index_select(0, rows).unsqueeze(1)  # (B E, 1, d)
        k_cols = k.reshape(B * N, self.att_dim).index_select(0, cols).unsqueeze(2)  # (B E, d, 1)
        return torch.bmm(q_rows, k_cols).reshape(B, edge_index.shape[2]) * self.scale

    def forward(
        self,
        X: torch.Tensor,
        adj: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        return_att: bool = False,
        edge_index: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Attend over each instance's neighbours.

        Args:
            X: (B, N, in_dim) instances.
            adj: (B, N, N) dense or sparse adjacency (the training form); None when ``edge_index`` is given.
            mask: (B, N) True / 1 = real instance (bool or uint8); None = all real.
            return_att: also return the edge attention.
            edge_index: (B, 2, E) int64 edge list (the serving form; used instead of ``adj``).
            edge_weight: (B, E) weights of ``edge_index`` (None = 1).

        Returns:
            L: (B, N, in_dim); with ``return_att`` also alpha (B, E), the attention of each edge of the edge
            list (``edge_index``'s order, or :func:`~milsdk.nn.adjacency.edge_list_from_adj`'s for ``adj``).
        """
        edge_index, edge_weight = resolve_edges(X, adj, edge_index, edge_weight, mask)
        L, alpha = self.attend_edges(X, edge_index, edge_weight)
        if return_att:
            return L, alpha
        return L

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, att_dim={self.att_dim}"
