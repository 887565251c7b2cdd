"""Tokens-to-token layer (Yuan et al., ICCV 2021, "Tokens-to-Token ViT: Training Vision Transformers from Scratch
on ImageNet"): a transformer layer, then the tokens are laid on their square map and unfolded into patches."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from milsdk.nn.masked import as_bool_mask
from milsdk.nn.transformers.irpe_transformer import iRPETransformerLayer

__all__ = ["T2TLayer"]


def _pair(value: Sequence[int] | int, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"T2TLayer: {name} must be an int or a pair, got {value!r}")
    return pair  # type: ignore[return-value]


class T2TLayer(torch.nn.Module):
    r"""One tokens-to-token step.

    .. math::
        T = \operatorname{TransformerLayer}(X) \in \mathbb{R}^{s^2 \times a},\quad
        Y = \operatorname{Unfold}_{k, \text{stride}, \text{pad}, \text{dil}}\big(\operatorname{reshape}_{s
        \times s}(T)\big)^\top \in \mathbb{R}^{L' \times a k_h k_w}

    (then a linear map to ``out_dim`` when given). The input's L tokens are the cells of an s x s map in
    row-major order (L = s^2). Masked tokens are empty cells: they take no part in the attention and are zero
    in the map, like the unfold's padding, so their features never change the output.

    Args:
        in_dim: token size of the input.
        out_dim: output size; None = att_dim * kh * kw.
        att_dim: width of the transformer layer.
        kernel_size, stride, padding, dilation: of the unfold.
        n_heads: attention heads.
        use_mlp: MLP sub-block in the transformer layer.
        dropout: dropout of the transformer layer.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int | None = None,
        att_dim: int = 512,
        kernel_size: Sequence[int] = (3, 3),
        stride: Sequence[int] = (1, 1),
        padding: Sequence[int] = (2, 2),
        dilation: Sequence[int] = (1, 1),
        n_heads: int = 4,
        use_mlp: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        kernel = _pair(kernel_size, "kernel_size")
        self.att_dim = att_dim
        self.unfold = torch.nn.Unfold(
            kernel_size=kernel,
            stride=_pair(stride, "stride"),
            padding=_pair(padding, "padding"),
            dilation=_pair(dilation, "dilation"),
        )
        self.transf_layer = iRPETransformerLayer(
            in_dim, att_dim, att_dim=att_dim, n_heads=n_heads, use_mlp=use_mlp, dropout=dropout,
            rpe_mode=None, rpe_skip=0,
        )
        patch_dim = att_dim * kernel[0] * kernel[1]
        self.out_proj = torch.nn.Linear(patch_dim, out_dim) if out_dim is not None else torch.nn.Identity()

    def forward(self, X: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens to patch tokens.

        Args:
            X: (B, s*s, in_dim) tokens of an s x s map, row-major.
            mask: (B, s*s) True / 1 = real token (bool or uint8); None = all real.

        Returns:
            (B, L', out_dim or att_dim * kh * kw), L' the number of unfold positions.

        Raises:
            ValueError: the token count is not a perfect square.
        """
        B, L = X.shape[0], X.shape[1]
        s = int(L**0.5)
        if s * s != L:
            raise ValueError(f"T2TLayer: {L} tokens do not form a square map")
        keep = as_bool_mask(mask, X)
        pos = torch.zeros(B, L, 2, dtype=torch.long, device=X.device)  # unused: no position encoding
        T, _ = self.transf_layer.forward_pos(X, keep, pos)
        T = T * keep.unsqueeze(-1).to(T.dtype)
        grid = T.transpose(1, 2).reshape(B, self.att_dim, s, s)
        return self.out_proj(self.unfold(grid).transpose(1, 2))
