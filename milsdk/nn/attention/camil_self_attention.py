"""torchmil 1.0.2's CAMIL self-attention (Fourkioti et al., ICLR 2024, "CAMIL: Context-Aware Multiple Instance
Learning for Cancer Detection and Subtyping in Whole Slide Images", as torchmil implements it), on edge lists."""

from __future__ import annotations

import torch

from milsdk.nn.adjacency import resolve_edges, scatter_add_rows
from milsdk.nn.attention.neighbour_attention import NeighbourAttention
from milsdk.nn.masked import masked_softmax

__all__ = ["CAMILSelfAttention"]


class CAMILSelfAttention(NeighbourAttention):
    r"""torchmil's CAMIL self-attention: one score per instance from its neighbours, softmaxed over the bag.

    With :math:`q_i = W_q x_i`, :math:`k_j = W_k x_j`, :math:`v_i = W_v x_i` (bias-free) and the adjacency
    weights :math:`a_{ij}`:

    .. math::
        w_i = \frac{1}{\sqrt d} \sum_{j} a_{ij}\, q_i^\top k_j,\qquad
        s = \operatorname{softmax}_{i \in \text{real}}(w),\qquad
        l_i = s_i\, v_i

    (:math:`d` = ``att_dim``). This is ``torchmil.models.camil.CAMILSelfAttention``'s function, computed on the
    edge list: the sum runs over each node's edges (a scatter sum, O(E d)), where torchmil forms the dense
    N x N product :math:`Q K^\top \odot A`. It is not the paper's neighbour attention
    (:class:`~milsdk.nn.attention.NeighbourAttention`, a softmax over each node's neighbours, milsdk's CAMIL
    default): here each instance keeps its own value, gated by a bag-wide softmax of its summed edge scores.
    The projections are the same as NeighbourAttention's (``qk``: in_dim -> 2 att_dim, ``v``: in_dim ->
    in_dim), so is the edge score.

    Masking: the softmax runs over the bag's real instances only and edges touching a padded instance weigh 0,
    so real outputs never depend on padding; padded outputs are 0. torchmil zeroes the padded pairs' scores
    but keeps padded instances in the softmax (score 0), so its outputs change with padding; for a bag alone
    (no padding) the two are the same function. A node without edges gets :math:`w_i = 0` (it still takes
    part in the softmax, as in torchmil).

    Args:
        in_dim: instance size D (the values keep it: :math:`W_v` is D x D).
        att_dim: query / key size d.
    """

    def attend_edges(
        self,
        X: torch.Tensor,
        edge_index: torch.Tensor,
        edge_weight: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention on a resolved edge list (what models call after :func:`resolve_edges`).

        Args:
            X: (B, N, in_dim) instances.
            edge_index: (B, 2, E) int64 local (row, column) indices.
            edge_weight: (B, E) weights; an edge of weight 0 is no edge (``resolve_edges`` gives 0 to edges
                touching padding).
            mask: (B, N) True / 1 = real instance (bool or uint8); None = all real.

        Returns:
            L: (B, N, in_dim) in X's dtype; s: (B, N) float32 at least, the softmax weights of the instances
            (sum to 1 over the real instances, 0 on padding).
        """
        B, N = X.shape[0], X.shape[1]
        work_dtype = torch.promote_types(X.dtype, torch.float32)
        scores = self._edge_scores(X, edge_index, work_dtype) * edge_weight.to(work_dtype)  # (B, E)
        offset = (torch.arange(B, device=X.device) * N).reshape(B, 1)
        rows = (edge_index[:, 0] + offset).reshape(-1)
        w = scatter_add_rows(scores.reshape(-1), rows, B * N).reshape(B, N)
        s = masked_softmax(w, mask)
        L = s.unsqueeze(-1) * self.v(X).to(work_dtype)
        return L.to(X.dtype), s

    def forward(
        self,
        X: torch.Tensor,
        adj: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        return_att: bool = False,
        edge_index: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Gate each instance's value by the bag-wide softmax of its summed neighbour scores.

        Args:
            X: (B, N, in_dim) instances.
            adj: (B, N, N) dense or sparse adjacency (torchmil's form); None when ``edge_index`` is given.
            mask: (B, N) True / 1 = real instance (bool or uint8); None = all real.
            return_att: also return the instance weights s.
            edge_index: (B, 2, E) int64 edge list (the serving form; used instead of ``adj``).
            edge_weight: (B, E) weights of ``edge_index`` (None = 1).

        Returns:
            L: (B, N, in_dim); with ``return_att`` also s (B, N), the softmax weights.
        """
        edge_index, edge_weight = resolve_edges(X, adj, edge_index, edge_weight, mask)
        L, s = self.attend_edges(X, edge_index, edge_weight, mask)
        if return_att:
            return L, s
        return L
