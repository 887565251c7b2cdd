"""Graph convolution on a bag's edge list (Kipf & Welling, ICLR 2017, "Semi-Supervised Classification with Graph
Convolutional Networks"), in the reference's form: the adjacency is used as given (normalise it beforehand)."""

from __future__ import annotations

import torch

from milsdk.nn.adjacency import propagate, resolve_edges
from milsdk.nn.linear import LazyLinear
from milsdk.nn.masked import as_bool_mask

__all__ = ["GCNConv"]


class GCNConv(torch.nn.Module):
    r"""Graph convolution layer.

    .. math::
        Y = \operatorname{drop}\Big(\operatorname{act}\big(\operatorname{LN}(\operatorname{l2}(
            W (A X + [\text{self loops}]\, X) + b))\big)\Big)

    where each step in brackets is optional: the self-loop term (``add_self_loops``, for real instances only),
    the linear map (``learn_weights``; without it the output size is the input size), the row-wise L2
    normalisation (``normalize``) and the LayerNorm (``layer_norm``). :math:`A X` is computed on the edge list
    (:func:`milsdk.nn.adjacency.propagate`), never with an N x N matrix.

    Args:
        in_dim: input size D (None = inferred at the first call when ``learn_weights``).
        out_dim: output size (ignored, = in_dim, when ``learn_weights`` is False).
        add_self_loops: add X to A X (A + I without building it).
        learn_weights: apply a Linear(in_dim, out_dim) after the propagation.
        layer_norm: LayerNorm over the output features.
        normalize: L2-normalise each output row.
        dropout: dropout rate on the output.
        activation: activation module applied after the normalisations.
        bias: bias of the Linear.
    """

    def __init__(
        self,
        in_dim: int | None,
        out_dim: int | None = None,
        add_self_loops: bool = False,
        learn_weights: bool = False,
        layer_norm: bool = False,
        normalize: bool = False,
        dropout: float = 0.0,
        activation: torch.nn.Module = torch.nn.Identity(),
        bias: bool = True,
    ) -> None:
        super().__init__()
        if out_dim is None or not learn_weights:
            out_dim = in_dim
        if out_dim is None and layer_norm:
            raise ValueError("GCNConv: layer_norm needs a known output size; give in_dim or out_dim")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.add_self_loops, self.learn_weights, self.normalize = add_self_loops, learn_weights, normalize
        self.fc = LazyLinear(in_dim, out_dim, bias=bias) if learn_weights else torch.nn.Identity()
        self.layer_norm = torch.nn.LayerNorm(out_dim) if layer_norm else torch.nn.Identity()
        self.activation = activation
        self.dropout = torch.nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        adj: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        edge_index: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Convolve node features over the graph.

        Args:
            x: (B, N, in_dim) node features.
            adj: (B, N, N) dense or sparse adjacency (the training form), or None when the edge list is given.
            mask: (B, N) True / 1 = real node; edges touching padding are dropped, padded nodes get no self loop.
            edge_index: (B, 2, E) int64 edge list (the serving form). edge_weight: (B, E) its weights.

        Returns:
            (B, N, out_dim); rows of real nodes never depend on padded ones.
        """
        edge_index, edge_weight = resolve_edges(x, adj, edge_index, edge_weight, mask)
        y = propagate(x, edge_index, edge_weight)
        if self.add_self_loops:
            if mask is None:
                y = y + x
            else:
                y = y + x * as_bool_mask(mask, x).unsqueeze(-1).to(x.dtype)
        y = self.fc(y)
        if self.normalize:
            y = torch.nn.functional.normalize(y, p=2.0, dim=-1)
        y = self.layer_norm(y)
        y = self.activation(y)
        return self.dropout(y)

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, out_dim={self.out_dim}, add_self_loops={self.add_self_loops}, "
            f"learn_weights={self.learn_weights}, normalize={self.normalize}"
        )
