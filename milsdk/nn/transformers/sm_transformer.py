r"""Pre-norm transformer layer and encoder whose self-attention output is smoothed over the bag graph by Sm
(Castro-Macías et al., NeurIPS 2024, "Sm: enhanced localization in Multiple Instance Learning for medical
imaging classification"), masked per bag, linear in memory in the bag size and in the edge count."""

from __future__ import annotations

import torch

from milsdk.nn.adjacency import resolve_edges
from milsdk.nn.attention.sm_multihead_self_attention import SmMultiheadSelfAttention
from milsdk.nn.transformers.layer import Layer

__all__ = ["SmTransformerEncoder", "SmTransformerLayer"]


class SmTransformerLayer(Layer):
    r"""Pre-norm transformer layer with Sm-smoothed multi-head self-attention.

    .. math::
        Z = P_\text{att} X + \operatorname{Sm}\big(\operatorname{MHSA}(\operatorname{LN}_1 X, \text{mask}),
        A\big),\qquad Y = P_\text{out}\big(Z + \operatorname{MLP}(\operatorname{LN}_2 Z)\big)

    The module structure (and state dict) is :class:`~milsdk.nn.transformers.layer.Layer`'s with a
    :class:`~milsdk.nn.attention.SmMultiheadSelfAttention` as attention (in_dim -> att_dim, MLP in att_dim,
    att_dim -> out_dim, the reference's layout). The layer needs the bag graph, so ``forward_att`` takes the
    edge list as well; Sm mixes all tokens, so there is no partial-query (class-token) path.

    Args:
        in_dim: token size of the input.
        out_dim: token size of the output (default ``in_dim``).
        att_dim: width of the attention and the MLP.
        n_heads: attention heads (must divide ``att_dim``).
        use_mlp: add the MLP sub-block (Linear 4x, GELU, Dropout, Linear, Dropout).
        dropout: dropout on the attention weights and inside the MLP.
        sm_alpha: 'trainable' or a fixed alpha in [0, 1) (see :class:`~milsdk.nn.sm.Sm`).
        sm_mode: 'approx' or 'exact'.
        sm_steps: iterations of the approx mode.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int | None = None,
        att_dim: int = 512,
        n_heads: int = 4,
        use_mlp: bool = True,
        dropout: float = 0.0,
        sm_alpha: float | str = "trainable",
        sm_mode: str = "approx",
        sm_steps: int = 10,
    ) -> None:
        att = SmMultiheadSelfAttention(
            in_dim,
            att_dim,
            att_dim=att_dim,
            n_heads=n_heads,
            dropout=dropout,
            sm_alpha=sm_alpha,
            sm_mode=sm_mode,
            sm_steps=sm_steps,
        )
        super().__init__(
            att,
            in_dim=in_dim,
            att_in_dim=in_dim,
            out_dim=out_dim,
            att_out_dim=att_dim,
            use_mlp=use_mlp,
            dropout=dropout,
        )
        self.att_dim = att_dim

    def forward_att(
        self,
        X: torch.Tensor,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
        n_queries: int = -1,
        edge_index: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer on a resolved edge list (:meth:`Layer.forward_att` with the graph).

        Args:
            X: (B, N, in_dim) tokens; mask: (B, N) True / 1 = real token; None = all real.
            need_weights: also return the attention weights (B, H, N, N).
            n_queries: must be -1 (all tokens: Sm smooths over the whole bag).
            edge_index: (B, 2, E) int64 edge list; edge_weight: (B, E) (required).

        Returns:
            Y: (B, N, out_dim); weights (B, H, N, N) or an empty tensor.

        Raises:
            ValueError: no edge list, or ``n_queries != -1``.
        """
        if edge_index is None or edge_weight is None:
            raise ValueError("SmTransformerLayer needs the bag graph: pass edge_index and edge_weight")
        if n_queries != -1:
            raise ValueError("SmTransformerLayer: Sm smooths over all tokens, n_queries must be -1")
        X = self.in_proj(X)
        A, weights = self.att_module.attend_edges(self.norm1(X), edge_index, edge_weight, mask, need_weights)
        Y = self.att_proj(X) + A
        if self.mlp_module is not None and self.norm2 is not None:
            Y = Y + self.mlp_module(self.norm2(Y))
        return self.out_proj(Y), weights

    def forward(
        self,
        X: torch.Tensor,
        adj: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        return_att: bool = False,
        edge_index: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One layer.

        Args:
            X: (B, N, in_dim) tokens.
            adj: (B, N, N) dense or sparse adjacency, or None when ``edge_index`` is given.
            mask: (B, N) True / 1 = real token (bool or uint8); None = all real.
            return_att: also return the attention weights (B, H, N, N).
            edge_index: (B, 2, E) int64 edge list (used instead of ``adj``).
            edge_weight: (B, E) weights of ``edge_index`` (None = 1).

        Returns:
            Y: (B, N, out_dim); with ``return_att`` also the weights.
        """
        edge_index, edge_weight = resolve_edges(X, adj, edge_index, edge_weight, mask)
        Y, att = self.forward_att(X, mask, return_att, -1, edge_index, edge_weight)
        if return_att:
            return Y, att
        return Y


class SmTransformerEncoder(torch.nn.Module):
    r"""Stack of :class:`SmTransformerLayer` with a final LayerNorm.

    .. math::
        X^l = \operatorname{SmLayer}_l(X^{l-1}, A, \text{mask})\;[+\,X \text{ if add\_self}],\qquad
        Y = \operatorname{LN}(X^L)

    Layout as :class:`~milsdk.nn.transformers.TransformerEncoder` (the first layer maps in_dim -> att_dim,
    middle layers att_dim, the last -> out_dim; with ``add_self`` every layer maps in_dim -> in_dim, att_dim
    wide inside, which the reference's layout is wherever it works and avoids its crash for att_dim != in_dim,
    defect 8.4). The graph is resolved once and shared by all layers. (Not an
    :class:`~milsdk.nn.transformers.Encoder`: its layer protocol carries no graph.)

    Args:
        in_dim: token size of the input.
        out_dim: token size of the output (default ``in_dim``).
        att_dim: width of the attention and MLP of every layer.
        n_heads: attention heads.
        n_layers: number of layers (>= 1).
        use_mlp: MLP sub-block in each layer.
        add_self: add the encoder input to the output of every layer.
        dropout: dropout of each layer.
        sm_alpha: 'trainable' or a fixed alpha in [0, 1), for every layer's Sm.
        sm_mode: 'approx' or 'exact'.
        sm_steps: iterations of the approx mode.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int | None = None,
        att_dim: int = 512,
        n_heads: int = 4,
        n_layers: int = 4,
        use_mlp: bool = True,
        add_self: bool = False,
        dropout: float = 0.0,
        sm_alpha: float | str = "trainable",
        sm_mode: str = "approx",
        sm_steps: int = 10,
    ) -> None:
        super().__init__()
        out_dim = in_dim if out_dim is None else out_dim
        if n_layers < 1:
            raise ValueError(f"SmTransformerEncoder: n_layers must be >= 1, got {n_layers}")
        if add_self and out_dim != in_dim:
            raise ValueError(
                f"SmTransformerEncoder: add_self adds the input (size {in_dim}) to every layer's output, "
                f"so out_dim must equal in_dim, got out_dim={out_dim}"
            )
        sizes = [in_dim] * (n_layers + 1) if add_self else [in_dim] + [att_dim] * (n_layers - 1) + [out_dim]
        self.layers = torch.nn.ModuleList(
            SmTransformerLayer(
                sizes[i],
                sizes[i + 1],
                att_dim=att_dim,
                n_heads=n_heads,
                use_mlp=use_mlp,
                dropout=dropout,
                sm_alpha=sm_alpha,
                sm_mode=sm_mode,
                sm_steps=sm_steps,
            )
            for i in range(n_layers)
        )
        self.in_dim, self.out_dim, self.att_dim = in_dim, out_dim, att_dim
        self.n_layers, self.add_self = n_layers, add_self
        self.norm = torch.nn.LayerNorm(out_dim)

    def encode(
        self,
        X: torch.Tensor,
        edge_index: torch.Tensor,
        edge_weight: torch.Tensor,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The encoder on a resolved edge list, with one fixed return type (for TorchScript callers).

        Args:
            X: (B, N, in_dim); edge_index: (B, 2, E) int64; edge_weight: (B, E); mask: (B, N) or None.
            need_weights: keep every layer's attention weights.

        Returns:
            Y: (B, N, out_dim) after the final LayerNorm; the layers' weights (B, H, N, N) (empty tensors
        unless ``need_weights``). """
        Y = X
        atts: list[torch.Tensor] = []
        for layer in self.layers:
            Y, att = layer.forward_att(Y, mask, need_weights, -1, edge_index, edge_weight)
            if self.add_self:
                Y = Y + X
            atts.append(att)
        return self.norm(Y), atts

    def forward(
        self,
        X: torch.Tensor,
        adj: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        return_att: bool = False,
        edge_index: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Encode the tokens of each bag.

        Args:
            X: (B, N, in_dim) tokens.
            adj: (B, N, N) dense or sparse adjacency, or None when ``edge_index`` is given.
            mask: (B, N) True / 1 = real token (bool or uint8); None = all real.
            return_att: also return every layer's attention weights, stacked (L, B, H, N, N) (forms N x N).
            edge_index: (B, 2, E) int64 edge list (used instead of ``adj``).
            edge_weight: (B, E) weights of ``edge_index`` (None = 1).

        Returns:
            Y: (B, N, out_dim); with ``return_att`` also the stacked weights (0 on masked keys and padded
            query rows, never NaN).
        """
        edge_index, edge_weight = resolve_edges(X, adj, edge_index, edge_weight, mask)
        Y, atts = self.encode(X, edge_index, edge_weight, mask, return_att)
        if return_att:
            return Y, torch.stack(atts)
        return Y

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, out_dim={self.out_dim}, att_dim={self.att_dim}, add_self={self.add_self}"
        )
