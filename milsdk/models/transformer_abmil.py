"""TransformerABMIL: a transformer encoder over the instances, then attention pooling (Castro-Macías et al.,
2024, "Sm: enhanced localization in Multiple Instance Learning for medical imaging classification")."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from milsdk.errors import ModelConfigError
from milsdk.models.mil_model import MILModel
from milsdk.models.registry import register_model
from milsdk.nn.attention import AttentionPool
from milsdk.nn.transformers import TransformerEncoder

__all__ = ["TransformerABMIL"]


@register_model
class TransformerABMIL(MILModel):
    r"""Transformer encoder + attention-based MIL pooling.

    .. math::
        H = \operatorname{TransformerEncoder}(\text{feat\_ext}(X), \text{mask}),\qquad
        z = \sum_i \operatorname{softmax}_{i \in \text{real}}(f_i)\, h_i,\quad f_i = w^\top \operatorname{act}(V h_i),
        \qquad \hat y = W z + b

    The encoder (pre-norm, exact masked multi-head self-attention, final LayerNorm) keeps the feature size;
    its attention is computed in query chunks, so memory grows linearly with the bag size in eager PyTorch,
    TorchScript and the exported ONNX graph (a 40,000-instance bag needs no 40k x 40k matrix).

    Deviation from the reference (defect 8.4): with ``transf_add_self=True`` (the default) and
    ``transf_n_layers > 1`` the reference crashes unless ``transf_att_dim`` equals the feature size; here
    every encoder layer maps the feature size back to itself (``transf_att_dim`` wide inside), see
    :class:`~milsdk.nn.transformers.TransformerEncoder`. Where the reference works, the layout is the same.

    Attention (``return_att``): the pooling logits f (B, N) before the masked softmax, as in the reference
    (``attention_output = "logits"``).

    Args:
        in_shape: shape of one instance, e.g. (1024,) (required: the encoder's size depends on it).
        pool_att_dim: hidden size of the attention pooling.
        pool_act: 'tanh', 'relu' or 'gelu'.
        pool_gated: gated attention pooling.
        feat_ext: instance feature extractor applied to X (default identity).
        transf_att_dim: width of the encoder's attention and MLP.
        transf_n_layers: encoder layers.
        transf_n_heads: attention heads (must divide ``transf_att_dim``).
        transf_use_mlp: MLP sub-block in each encoder layer.
        transf_add_self: add the encoder input to every layer's output.
        transf_dropout: dropout in the encoder (training only).
        criterion: loss (default BCEWithLogitsLoss for one output, CrossEntropyLoss for n_classes > 1).
        n_classes: number of outputs (1 = binary, logits (B,); C > 1 = logits (B, C)).
    """

    attention_output = "logits"
    test_config = {"transf_att_dim": 16, "transf_n_heads": 2, "transf_n_layers": 2, "pool_att_dim": 8}
    __jit_unused_properties__ = ["config", "in_shape", "n_outputs"]

    def __init__(
        self,
        in_shape: Sequence[int] | None,
        pool_att_dim: int = 128,
        pool_act: str = "tanh",
        pool_gated: bool = False,
        feat_ext: torch.nn.Module | None = None,
        transf_att_dim: int = 512,
        transf_n_layers: int = 1,
        transf_n_heads: int = 8,
        transf_use_mlp: bool = True,
        transf_add_self: bool = True,
        transf_dropout: float = 0.0,
        criterion: torch.nn.Module | None = None,
        n_classes: int = 1,
    ) -> None:
        super().__init__()
        if in_shape is None:
            raise ModelConfigError(
                "TransformerABMIL needs in_shape (e.g. (1024,)): the transformer encoder's size is the feature size"
            )
        if transf_att_dim < 1 or transf_att_dim % transf_n_heads != 0:
            raise ModelConfigError(
                f"TransformerABMIL: transf_n_heads={transf_n_heads} must divide transf_att_dim={transf_att_dim}"
            )
        feat_dim = self.setup_head(feat_ext, in_shape, criterion, n_classes)
        self.transformer_encoder = TransformerEncoder(
            in_dim=feat_dim,
            att_dim=transf_att_dim,
            n_heads=transf_n_heads,
            n_layers=transf_n_layers,
            use_mlp=transf_use_mlp,
            add_self=transf_add_self,
            dropout=transf_dropout,
        )
        self.pool = AttentionPool(in_dim=feat_dim, att_dim=pool_att_dim, act=pool_act, gated=pool_gated)
        self.last_layer = torch.nn.Linear(feat_dim, n_classes)

    def forward(
        self, X: torch.Tensor, mask: torch.Tensor | None = None, return_att: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Bag logits.

        Args:
            X: (B, N, *in_shape) instance features.
            mask: (B, N) True / 1 = real instance (bool or uint8); None = all real.
            return_att: also return the attention logits.

        Returns:
            logits (B,) for one output or (B, C); with ``return_att`` also f (B, N), the pooling's attention
            logits before the masked softmax.
        """
        H = self.transformer_encoder(self.feat_ext(X), mask)
        assert isinstance(
            H, torch.Tensor
        )  # forward without return_att gives a tensor (TorchScript refinement)
        z, f = self.pool.pool_with_logits(H, mask)
        logits = self.squeeze_binary(self.last_layer(z))
        if return_att:
            return logits, f
        return logits
