"""Pre-norm transformer layer and encoder with exact multi-head self-attention (Vaswani et al., NeurIPS 2017),
masked per bag and linear in memory in the bag size (query-chunked attention, also in exported ONNX)."""

from __future__ import annotations

import torch

from milsdk.nn.attention.multihead_self_attention import MultiheadSelfAttention
from milsdk.nn.transformers.encoder import Encoder
from milsdk.nn.transformers.layer import Layer

__all__ = ["TransformerEncoder", "TransformerLayer"]


class TransformerLayer(Layer):
    r"""Pre-norm transformer layer with masked multi-head self-attention.

    .. math::
        Z = P_\text{att} X + \operatorname{MHSA}(\operatorname{LN}_1 X, \text{mask}),\qquad
        Y = P_\text{out}\big(Z + \operatorname{MLP}(\operatorname{LN}_2 Z)\big)

    The attention maps in_dim -> att_dim (:math:`P_\text{att}` is a Linear when they differ), the MLP works in
    att_dim, :math:`P_\text{out}` maps att_dim -> out_dim (the reference's layout). Real positions never depend
    on padded ones; outputs at padded positions are finite and meaningless.

    Args:
        in_dim: token size of the input.
        out_dim: token size of the output (default ``in_dim``).
        att_dim: width of the attention and the MLP.
        n_heads: attention heads (must divide ``att_dim``).
        use_mlp: add the MLP sub-block (Linear 4x, GELU, Dropout, Linear, Dropout).
        dropout: dropout on the attention weights and inside the MLP.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int | None = None,
        att_dim: int = 512,
        n_heads: int = 4,
        use_mlp: bool = True,
        dropout: float = 0.0,
    ) -> None:
        att = MultiheadSelfAttention(in_dim, att_dim, att_dim=att_dim, n_heads=n_heads, dropout=dropout)
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


class TransformerEncoder(Encoder):
    r"""Stack of :class:`TransformerLayer` with a final LayerNorm.

    .. math::
        X^l = \operatorname{Layer}_l(X^{l-1}, \text{mask})\;[+\,X \text{ if add\_self}],\qquad
        Y = \operatorname{LN}(X^L)

    Layout (as the reference): the first layer maps in_dim -> att_dim, middle layers work in att_dim, the last
    maps to out_dim. With ``add_self`` the input is added to every layer's output, which the reference only
    allows when att_dim == in_dim (it crashes otherwise for n_layers > 1, defect 8.4); here every layer then
    maps in_dim -> in_dim (still att_dim wide inside: attention and MLP), which is the reference's layout
    whenever the reference works, and works for any att_dim. ``add_self`` needs out_dim == in_dim.

    Args:
        in_dim: token size of the input.
        out_dim: token size of the output (default ``in_dim``).
        att_dim: width of the attention and MLP of every layer.
        n_heads: attention heads.
        n_layers: number of layers (>= 1).
        use_mlp: MLP sub-block in each layer.
        add_self: add the encoder input to the output of every layer.
        dropout: dropout of each layer.
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
    ) -> None:
        out_dim = in_dim if out_dim is None else out_dim
        if n_layers < 1:
            raise ValueError(f"TransformerEncoder: n_layers must be >= 1, got {n_layers}")
        if add_self and out_dim != in_dim:
            raise ValueError(
                f"TransformerEncoder: add_self adds the input (size {in_dim}) to every layer's output, "
                f"so out_dim must equal in_dim, got out_dim={out_dim}"
            )
        if add_self:
            sizes = [in_dim] * (n_layers + 1)
        else:
            sizes = [in_dim] + [att_dim] * (n_layers - 1) + [out_dim]
        layers = torch.nn.ModuleList(
            TransformerLayer(
                sizes[i], sizes[i + 1], att_dim=att_dim, n_heads=n_heads, use_mlp=use_mlp, dropout=dropout
            )
            for i in range(n_layers)
        )
        super().__init__(layers, add_self=add_self)
        self.in_dim, self.out_dim, self.att_dim = in_dim, out_dim, att_dim
        self.norm = torch.nn.LayerNorm(out_dim)

    @torch.jit.export
    def forward_first(
        self, X: torch.Tensor, mask: torch.Tensor | None = None, n_queries: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward(X, mask)[:, :n_queries]`` with the last layer computed for those tokens only (O(N) for a
        class token), plus that layer's attention weights of those tokens (B, H, n_queries, N)."""
        Y, atts = self._encode(X, mask, False, n_queries)
        return self.norm(Y), atts[-1]

    def forward(
        self, X: torch.Tensor, mask: torch.Tensor | None = None, return_att: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Encode the tokens of each bag.

        Args:
            X: (B, N, in_dim) tokens.
            mask: (B, N) True / 1 = real token (bool or uint8); None = all real.
            return_att: also return every layer's attention weights, stacked (L, B, H, N, N) (forms N x N).

        Returns:
            Y: (B, N, out_dim); with ``return_att`` also the stacked weights (0 on masked keys and padded
            query rows, never NaN).
        """
        Y, atts = self._encode(X, mask, return_att, -1)
        Y = self.norm(Y)
        if return_att:
            return Y, torch.stack(atts)
        return Y
