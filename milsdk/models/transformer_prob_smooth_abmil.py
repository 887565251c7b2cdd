"""TransformerProbSmoothABMIL: a transformer encoder over the instances (global interactions), then
probabilistic smooth attention pooling (local interactions through the smoothness prior) (Castro-Macías et
al., 2025, "Probabilistic smooth attention for deep multiple instance learning in medical imaging")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch

from milsdk.errors import ModelConfigError
from milsdk.models.prob_smooth_model import ProbSmoothMILModel
from milsdk.models.registry import register_model
from milsdk.nn.transformers import TransformerEncoder

__all__ = ["TransformerProbSmoothABMIL"]


@register_model
class TransformerProbSmoothABMIL(ProbSmoothMILModel):
    r"""Transformer encoder + probabilistic smooth attention pooling.

    .. math::
        H = \operatorname{TransformerEncoder}(\text{feat\_ext}(X), \text{mask}),\quad
        \hat f^{(s)} \sim \mathcal N(\boldsymbol\mu_f(H), \operatorname{diag}\boldsymbol\sigma_f^2(H)),\quad
        \hat y = \frac1S \sum_s W \sum_i \operatorname{softmax}_i(\hat f^{(s)})\, h_i + b

    The encoder (pre-norm, exact masked multi-head self-attention computed in query chunks, final LayerNorm)
    keeps the feature size; memory grows linearly with the bag size, in eager PyTorch and in the exported
    graph. Training loss: the criterion on every sample's logits plus ``KLDiv``, the smoothness term of
    :class:`~milsdk.nn.attention.ProbSmoothAttentionPool`, which needs the bag graph (``adj`` dense or
    sparse, or ``edge_index`` / ``edge_weight``, routed by name to ``compute_loss``; without one the term is
    computed for a graph without edges, with a warning).

    Deployment: the prediction does not use the graph (the reference's ``forward(X, adj, mask)`` passes adj
    only to the loss term), so the model declares no extra inputs and is served with features and mask only;
    ``forward`` takes ``(X, mask, adj, ...)`` so that ``model(X, mask)`` honours the mask (a 3-D tensor
    given as mask is refused). ``predict`` takes no adj (it would be unused).

    Eval mode is deterministic: the attention logits are their mean (one "sample"), not ``n_samples_test``
    random samples, which is also what the exported model computes; ``predict(..., return_samples=True)`` in
    eval draws ``n_samples_test`` random samples (the predictive distribution).

    Deviations from the reference: ``in_shape=None`` (the reference's default, which crashes there, defect
    8.4) raises a clear ModelConfigError: the encoder is sized by the feature size. With
    ``transf_add_self=True`` and ``transf_n_layers > 1`` every encoder layer maps the feature size back to
    itself, so any ``transf_att_dim`` works (see :class:`~milsdk.nn.transformers.TransformerEncoder`).

    Attention (``return_att``): the pooling's attention logits averaged over the samples (B, N), before the
    masked softmax (``attention_output = "logits"``).

    Args:
        in_shape: shape of one instance, e.g. (1024,) (required: the encoder's size depends on it).
        pool_att_dim: the pooling's attention MLP is 2 * pool_att_dim wide.
        covar_mode: 'diag' (learned attention variances) or 'zero' (deterministic attention, one sample).
        n_samples_train: attention samples per bag in training mode.
        n_samples_test: attention samples of ``predict(..., return_samples=True)`` in eval mode.
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

    test_config = {
        "pool_att_dim": 8,
        "n_samples_train": 4,
        "n_samples_test": 4,
        "transf_att_dim": 16,
        "transf_n_heads": 2,
    }
    __jit_unused_properties__ = ["config", "in_shape", "n_outputs"]

    def __init__(
        self,
        in_shape: Sequence[int] | None = None,
        pool_att_dim: int = 128,
        covar_mode: str = "diag",
        n_samples_train: int = 1000,
        n_samples_test: int = 5000,
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
                "TransformerProbSmoothABMIL needs in_shape (e.g. (1024,)): its transformer encoder is sized "
                "by the feature size"
            )
        if transf_att_dim < 1 or transf_att_dim % transf_n_heads != 0:
            raise ModelConfigError(
                f"TransformerProbSmoothABMIL: transf_n_heads={transf_n_heads} must divide "
                f"transf_att_dim={transf_att_dim}"
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
        self.setup_pool(feat_dim, pool_att_dim, covar_mode, n_samples_train, n_samples_test)
        self.classifier = torch.nn.Linear(feat_dim, n_classes)

    def _instances(self, X: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """The instance embeddings the pool attends over: the encoder over feat_ext(X) (B, N, D)."""
        H = self.transformer_encoder(self.feat_ext(X), mask)
        # forward without return_att gives a tensor (TorchScript refinement)
        assert isinstance(H, torch.Tensor)
        return H
