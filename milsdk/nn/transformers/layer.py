"""Generic pre-norm transformer layer around any attention module that follows the ``attend`` protocol."""

from __future__ import annotations

import torch

__all__ = ["Layer", "default_mlp", "linear_or_identity"]


def linear_or_identity(in_dim: int, out_dim: int) -> torch.nn.Module:
    """Linear(in_dim, out_dim) where the sizes differ, else Identity (the projections of a pre-norm layer)."""
    return torch.nn.Linear(in_dim, out_dim) if in_dim != out_dim else torch.nn.Identity()


def default_mlp(dim: int, dropout: float = 0.0) -> torch.nn.Module:
    """The transformer feed-forward block: Linear(dim, 4 dim), GELU, Dropout, Linear(4 dim, dim), Dropout."""
    return torch.nn.Sequential(
        torch.nn.Linear(dim, 4 * dim),
        torch.nn.GELU(),
        torch.nn.Dropout(dropout),
        torch.nn.Linear(4 * dim, dim),
        torch.nn.Dropout(dropout),
    )


class Layer(torch.nn.Module):
    r"""Pre-norm transformer layer with a pluggable attention module.

    .. math::
        X' = P_\text{in} X,\qquad
        Z = P_\text{att} X' + \operatorname{Att}(\operatorname{LN}_1 X', \text{mask}),\qquad
        Y = P_\text{out}\big(Z + \operatorname{MLP}(\operatorname{LN}_2 Z)\big)

    (the MLP term only with ``use_mlp``; each :math:`P` is a Linear present only where its sizes differ, as in
    the reference). Token-wise operations aside, only the attention mixes tokens, so real positions never
    depend on padded ones when the attention is masked.

    The attention module must provide ``attend(x, mask, need_weights, n_queries) -> (y, weights)``
    (as :class:`~milsdk.nn.attention.MultiheadSelfAttention` does): x (B, N, att_in_dim) -> y
    (B, Nq, att_out_dim) for the first ``n_queries`` tokens (-1 = all), weights (B, H, Nq, N) or empty. Unlike
    the reference's ``forward(X, return_att, **kwargs)``, the mask is the one explicit extra argument, so that
    the layer compiles with TorchScript.

    Args:
        att_module: the attention, (B, N, att_in_dim) -> (B, N, att_out_dim).
        in_dim: token size of the input.
        att_in_dim: input size of the attention.
        out_dim: token size of the output (default ``in_dim``).
        att_out_dim: output size of the attention (default ``att_in_dim``).
        use_mlp: add the MLP sub-block.
        mlp_module: the MLP (default :func:`default_mlp` of ``att_out_dim``).
        dropout: dropout inside the default MLP.
    """

    def __init__(
        self,
        att_module: torch.nn.Module,
        in_dim: int,
        att_in_dim: int,
        out_dim: int | None = None,
        att_out_dim: int | None = None,
        use_mlp: bool = True,
        mlp_module: torch.nn.Module | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        out_dim = in_dim if out_dim is None else out_dim
        att_out_dim = att_in_dim if att_out_dim is None else att_out_dim
        self.in_dim, self.out_dim, self.use_mlp = in_dim, out_dim, use_mlp
        self.att_module = att_module
        self.in_proj = linear_or_identity(in_dim, att_in_dim)
        self.att_proj = linear_or_identity(att_in_dim, att_out_dim)
        self.norm1 = torch.nn.LayerNorm(att_in_dim)
        if use_mlp:
            self.norm2: torch.nn.Module | None = torch.nn.LayerNorm(att_out_dim)
            self.mlp_module: torch.nn.Module | None = (
                mlp_module if mlp_module is not None else default_mlp(att_out_dim, dropout)
            )
        else:
            self.norm2 = None
            self.mlp_module = None
        self.out_proj = linear_or_identity(att_out_dim, out_dim)

    def forward_att(
        self,
        X: torch.Tensor,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
        n_queries: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's outputs at the first ``n_queries`` tokens (all when -1), attending over all tokens.

        Args:
            X: (B, N, in_dim) tokens; mask: (B, N) True / 1 = real token; None = all real.
            need_weights: also return the attention weights.
            n_queries: leading tokens whose outputs are computed (-1 = all); e.g. 1 for a class token only.

        Returns:
            Y: (B, Nq, out_dim); weights (B, H, Nq, N) or an empty tensor.
        """
        X = self.in_proj(X)
        A, weights = self.att_module.attend(self.norm1(X), mask, need_weights, n_queries)
        X_q = X if n_queries < 0 else X[:, :n_queries]
        Y = self.att_proj(X_q) + A
        if self.mlp_module is not None and self.norm2 is not None:
            Y = Y + self.mlp_module(self.norm2(Y))
        return self.out_proj(Y), weights

    def forward(
        self, X: torch.Tensor, mask: torch.Tensor | None = None, return_att: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One layer.

        Args:
            X: (B, N, in_dim) tokens.
            mask: (B, N) True / 1 = real token (bool or uint8); None = all real.
            return_att: also return the attention weights (B, H, N, N).

        Returns:
            Y: (B, N, out_dim); with ``return_att`` also the weights.
        """
        Y, att = self.forward_att(X, mask, return_att)
        if return_att:
            return Y, att
        return Y
