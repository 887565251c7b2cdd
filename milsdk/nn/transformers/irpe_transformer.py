"""Pre-norm transformer layer and encoder with iRPE self-attention (Wu et al., ICCV 2021), masked per bag."""

from __future__ import annotations

import torch

from milsdk.nn.attention.irpe_multihead_self_attention import iRPEMultiheadSelfAttention
from milsdk.nn.masked import as_bool_mask
from milsdk.nn.transformers.layer import default_mlp, linear_or_identity

__all__ = ["iRPETransformerEncoder", "iRPETransformerLayer"]



class iRPETransformerLayer(torch.nn.Module):
    r"""Pre-norm transformer layer with iRPE multi-head self-attention.

    .. math::
        Z = P_\text{att} X + \operatorname{iRPEAtt}(\operatorname{LN}_1 X),\qquad
        Y = P_\text{out}\big(Z + \operatorname{MLP}(\operatorname{LN}_2 Z)\big)

    (the MLP term only with ``use_mlp``: Linear 4x, GELU, Dropout, Linear, Dropout; :math:`P_\text{att}`
    maps in_dim to att_dim and :math:`P_\text{out}` att_dim to out_dim, each present only when the sizes
    differ, as in the reference). Real positions never depend on padded ones.

    Args:
        in_dim: token size of the input.
        out_dim: token size of the output (default ``in_dim``).
        att_dim: width of the attention and the MLP.
        n_heads: attention heads.
        use_mlp: add the MLP sub-block.
        dropout: dropout on the attention weights and inside the MLP.
        rpe_ratio, rpe_method, rpe_mode, rpe_shared_head, rpe_skip, rpe_on: the position encoding (see
            :class:`~milsdk.nn.attention.iRPEMultiheadSelfAttention`).
        layout: the attention's sequence layout, "positions" or "torchmil" (see
            :class:`~milsdk.nn.attention.iRPEMultiheadSelfAttention`).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int | None = None,
        att_dim: int = 512,
        n_heads: int = 4,
        use_mlp: bool = True,
        dropout: float = 0.0,
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
        out_dim = in_dim if out_dim is None else out_dim
        self.in_dim, self.out_dim, self.att_dim = in_dim, out_dim, att_dim
        self.att_module = iRPEMultiheadSelfAttention(
            in_dim,
            att_dim,
            att_dim=att_dim,
            n_heads=n_heads,
            dropout=dropout,
            rpe_ratio=rpe_ratio,
            rpe_method=rpe_method,
            rpe_mode=rpe_mode,
            rpe_shared_head=rpe_shared_head,
            rpe_skip=rpe_skip,
            rpe_on=rpe_on,
            layout=layout,
        )
        self.norm1 = torch.nn.LayerNorm(in_dim)
        self.att_proj = linear_or_identity(in_dim, att_dim)
        if use_mlp:
            self.norm2: torch.nn.Module | None = torch.nn.LayerNorm(att_dim)
            self.mlp_module: torch.nn.Module | None = default_mlp(att_dim, dropout)
        else:
            self.norm2 = None
            self.mlp_module = None
        self.out_proj = linear_or_identity(att_dim, out_dim)

    def forward_pos(
        self, X: torch.Tensor, keep: torch.Tensor, pos: torch.Tensor, full_att: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer with explicit positions (see :meth:`iRPEMultiheadSelfAttention.forward_pos`).

        Returns:
            Y (B, L, out_dim) and the attention: (B, H, L) class-token row, or (B, H, L, L) with ``full_att``.
        """
        att_out, att = self.att_module.forward_pos(self.norm1(X), keep, pos, full_att)
        Y = self.att_proj(X) + att_out
        if self.mlp_module is not None and self.norm2 is not None:
            Y = Y + self.mlp_module(self.norm2(Y))
        return self.out_proj(Y), att

    def forward(
        self,
        X: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_att: bool = False,
        height: int | None = None,
        width: int | None = None,
        coords: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One layer.

        Args:
            X: (B, L, in_dim) tokens (the first ``rpe_skip`` are non-spatial).
            mask: (B, L) True / 1 = real token (bool or uint8); None = all real.
            return_att: also return the (B, H, L, L) attention weights.
            height, width: grid of the spatial tokens when ``coords`` is None.
            coords: (B, L - rpe_skip, 2) grid coordinates of the spatial tokens.

        Returns:
            Y: (B, L, out_dim); with ``return_att`` also the weights.
        """
        keep = as_bool_mask(mask, X)
        pos = self.att_module.positions(X, keep, height, width, coords)
        Y, att = self.forward_pos(X, keep, pos, return_att)
        if return_att:
            return Y, att
        return Y


class iRPETransformerEncoder(torch.nn.Module):
    r"""Stack of :class:`iRPETransformerLayer` with a final LayerNorm.

    .. math::
        X_0 = X,\quad X_l = \operatorname{Layer}_l(X_{l-1}) \;[+\, X \text{ if add\_self}],\quad
        Y = \operatorname{LN}(X_L)

    The first layer maps in_dim to att_dim, the last att_dim to out_dim (as in the reference). Every layer
    sees the same positions and mask.

    Args:
        in_dim: token size of the input.
        out_dim: token size of the output (default ``in_dim``).
        att_dim: width of the layers.
        n_heads: attention heads.
        n_layers: number of layers (>= 1).
        use_mlp: MLP sub-block in each layer.
        add_self: add the encoder input to the output of every layer (needs every layer's output size to
            equal in_dim).
        dropout: dropout of each layer.
        rpe_ratio, rpe_method, rpe_mode, rpe_shared_head, rpe_skip, rpe_on: the position encoding.
        layout: every layer's attention layout, "positions" or "torchmil" (see
            :class:`~milsdk.nn.attention.iRPEMultiheadSelfAttention`).
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
        if n_layers < 1:
            raise ValueError(f"iRPETransformerEncoder: n_layers must be >= 1, got {n_layers}")
        out_dim = in_dim if out_dim is None else out_dim
        if add_self and (out_dim != in_dim or (n_layers > 1 and att_dim != in_dim)):
            raise ValueError(
                "iRPETransformerEncoder: add_self needs every layer's output size to equal in_dim "
                f"(in_dim={in_dim}, att_dim={att_dim}, out_dim={out_dim}, n_layers={n_layers})"
            )
        self.in_dim, self.out_dim, self.att_dim, self.add_self = in_dim, out_dim, att_dim, add_self
        self.layers = torch.nn.ModuleList(
            iRPETransformerLayer(
                in_dim if i == 0 else att_dim,
                out_dim if i == n_layers - 1 else att_dim,
                att_dim=att_dim,
                n_heads=n_heads,
                use_mlp=use_mlp,
                dropout=dropout,
                rpe_ratio=rpe_ratio,
                rpe_method=rpe_method,
                rpe_mode=rpe_mode,
                rpe_shared_head=rpe_shared_head,
                rpe_skip=rpe_skip,
                rpe_on=rpe_on,
                layout=layout,
            )
            for i in range(n_layers)
        )
        self.norm = torch.nn.LayerNorm(out_dim)

    def forward_pos(
        self, X: torch.Tensor, keep: torch.Tensor, pos: torch.Tensor, full_att: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode with explicit positions.

        Args:
            X: (B, L, in_dim); keep: (B, L) bool; pos: (B, L, 2) long grid positions.
            full_att: return every layer's (B, H, L, L) weights instead of the last layer's class-token row.

        Returns:
            Y (B, L, out_dim) and the attention: the last layer's (B, H, L) row of token 0, or with
            ``full_att`` (n_layers, B, H, L, L).
        """
        Y = X
        atts: list[torch.Tensor] = []
        att = X.new_zeros(0)
        for layer in self.layers:
            Y, att = layer.forward_pos(Y, keep, pos, full_att)
            if self.add_self:
                Y = Y + X
            if full_att:
                atts.append(att)
        Y = self.norm(Y)
        if full_att:
            return Y, torch.stack(atts)
        return Y, att

    def forward(
        self,
        X: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_att: bool = False,
        height: int | None = None,
        width: int | None = None,
        coords: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Encode the tokens of each bag.

        Args:
            X: (B, L, in_dim) tokens (the first ``rpe_skip`` are non-spatial).
            mask: (B, L) True / 1 = real token (bool or uint8); None = all real.
            return_att: also return every layer's weights, (n_layers, B, H, L, L).
            height, width: grid of the spatial tokens when ``coords`` is None.
            coords: (B, L - rpe_skip, 2) grid coordinates of the spatial tokens.

        Returns:
            Y: (B, L, out_dim); with ``return_att`` also the weights.
        """
        keep = as_bool_mask(mask, X)
        pos = self.layers[0].att_module.positions(X, keep, height, width, coords)
        Y, att = self.forward_pos(X, keep, pos, return_att)
        if return_att:
            return Y, att
        return Y
