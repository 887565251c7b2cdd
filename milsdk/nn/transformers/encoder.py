"""Generic transformer encoder: a stack of :class:`~milsdk.nn.transformers.layer.Layer`, optionally adding the
input to every layer's output."""

from __future__ import annotations

import torch

__all__ = ["Encoder"]


class Encoder(torch.nn.Module):
    r"""Stack of transformer layers.

    .. math::
        X^0 = X,\qquad X^l = \operatorname{Layer}_l(X^{l-1}, \text{mask})\;[+\,X \text{ if add\_self}]

    Args:
        layers: the layers (each with ``forward_att(X, mask, need_weights, n_queries)``, see
            :class:`~milsdk.nn.transformers.layer.Layer`); with ``add_self`` every layer's output size must
            equal the input size.
        add_self: add the encoder input X to the output of every layer.
    """

    def __init__(self, layers: torch.nn.ModuleList, add_self: bool = False) -> None:
        super().__init__()
        if len(layers) < 1:
            raise ValueError("Encoder: needs at least one layer")
        self.layers = layers
        self.add_self = add_self
        self.n_layers = len(layers)

    def _encode(
        self, X: torch.Tensor, mask: torch.Tensor | None, keep_att: bool, n_queries: int
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the layers; the last one only for the first ``n_queries`` tokens (-1 = all)."""
        Y = X
        atts: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            last = i == self.n_layers - 1
            Y, att = layer.forward_att(
                Y, mask, keep_att or (last and n_queries >= 0), n_queries if last else -1
            )
            if self.add_self:
                Y = Y + (X if not last or n_queries < 0 else X[:, :n_queries])
            atts.append(att)
        return Y, atts

    @torch.jit.export
    def forward_first(
        self, X: torch.Tensor, mask: torch.Tensor | None = None, n_queries: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's outputs at the first ``n_queries`` tokens only, with the last layer's weights there.

        Equal to ``forward(X, mask)[:, :n_queries]``, but the last layer computes only those rows: O(N) time
        and memory for a class token. Earlier layers run over all tokens (linear memory).

        Args:
            X: (B, N, in_dim); mask: (B, N); n_queries: >= 1.

        Returns:
            Y: (B, n_queries, out_dim); weights: (B, H, n_queries, N), the last layer's attention of those
            tokens.
        """
        Y, atts = self._encode(X, mask, False, n_queries)
        return Y, atts[-1]

    def forward(
        self, X: torch.Tensor, mask: torch.Tensor | None = None, return_att: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Encode the tokens of each bag.

        Args:
            X: (B, N, in_dim) tokens.
            mask: (B, N) True / 1 = real token (bool or uint8); None = all real.
            return_att: also return every layer's attention, stacked (L, B, H, N, N).

        Returns:
            Y: (B, N, out_dim); with ``return_att`` also the stacked weights.
        """
        Y, atts = self._encode(X, mask, return_att, -1)
        if return_att:
            return Y, torch.stack(atts)
        return Y
