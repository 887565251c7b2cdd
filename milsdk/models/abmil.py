"""ABMIL: attention-based deep MIL (Ilse, Tomczak, Welling, ICML 2018).

Instance encoder (``feat_ext``) -> attention pooling -> linear classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from milsdk.models.mil_model import MILModel
from milsdk.models.registry import register_model
from milsdk.nn.attention import AttentionPool
from milsdk.nn.linear import LazyLinear

__all__ = ["ABMIL"]


@register_model
class ABMIL(MILModel):
    r"""Attention-based MIL.

    .. math:: z = \sum_i \operatorname{softmax}_i(f_i)\, h_i,\quad h_i = \text{feat\_ext}(x_i),\quad
              \hat y = W z + b

    Args:
        in_shape: shape of one instance, e.g. (2048,); None = lazy (inferred at the first forward).
        att_dim: attention hidden size.
        att_act: 'tanh', 'relu' or 'gelu'.
        gated: gated attention.
        feat_ext: instance feature extractor applied to X (default identity).
        criterion: loss (default BCEWithLogitsLoss for one output, CrossEntropyLoss for n_classes > 1).
        n_classes: number of outputs (1 = binary, logits (B,); C > 1 = logits (B, C)).
    """

    test_config = {"att_dim": 16}

    def __init__(
        self,
        in_shape: Sequence[int] | None = None,
        att_dim: int = 128,
        att_act: str = "tanh",
        gated: bool = False,
        feat_ext: torch.nn.Module | None = None,
        criterion: torch.nn.Module | None = None,
        n_classes: int = 1,
    ) -> None:
        super().__init__()
        feat_dim = self.setup_head(feat_ext, in_shape, criterion, n_classes)
        self.pool = AttentionPool(in_dim=feat_dim, att_dim=att_dim, act=att_act, gated=gated)
        self.classifier = LazyLinear(feat_dim, n_classes)

    def forward(
        self, X: torch.Tensor, mask: torch.Tensor | None = None, return_att: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Bag logits.

        Args:
            X: (B, N, *in_shape) instance features.
            mask: (B, N) True / 1 = real instance; None = all real.
            return_att: also return the attention logits.

        Returns:
            logits (B,) for one output or (B, C); with ``return_att`` also f (B, N), attention logits before the
            masked softmax (as in the reference).
        """
        H = self.feat_ext(X)
        z, f = self.pool.pool_with_logits(H, mask)
        logits = self.squeeze_binary(self.classifier(z))
        if return_att:
            return logits, f
        return logits
