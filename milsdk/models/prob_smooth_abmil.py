"""ProbSmoothABMIL and SmoothABMIL: attention MIL with probabilistic (or deterministic) smooth attention
(Castro-Macías et al., 2025, "Probabilistic smooth attention for deep multiple instance learning in medical
imaging"; Castro-Macías et al., 2023, "Smooth Attention for Deep Multiple Instance Learning: Application to CT
Intracranial Hemorrhage Detection").

Instance encoder (``feat_ext``) -> probabilistic attention pooling (one pooled vector per attention sample) ->
linear classifier; the graph enters only the training loss (a KL / Dirichlet-energy smoothness term).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Optional

import torch

from milsdk.models.prob_smooth_model import ProbSmoothMILModel
from milsdk.models.registry import register_model
from milsdk.nn.linear import LazyLinear

__all__ = ["ProbSmoothABMIL", "SmoothABMIL"]


@register_model
class ProbSmoothABMIL(ProbSmoothMILModel):
    r"""Attention-based MIL with probabilistic smooth attention.

    .. math::
        h_i = \text{feat\_ext}(x_i),\quad \hat f^{(s)} \sim q(\mathbf f \mid H) = \mathcal N(\boldsymbol\mu_f,
        \operatorname{diag}\boldsymbol\sigma_f^2),\quad
        \hat y^{(s)} = W \sum_i \operatorname{softmax}_i(\hat f^{(s)})\, h_i + b,\qquad
        \hat y = \frac1S \sum_s \hat y^{(s)}

    Training loss: the criterion on every sample's logits (``{criterion name}``) plus the smoothness term
    ``KLDiv`` of :class:`~milsdk.nn.attention.ProbSmoothAttentionPool` (weigh it with the Trainer's loss
    coefficients), which needs the bag graph: ``compute_loss`` takes ``adj`` (dense or sparse (B, N, N), as
    ``collate_fn`` gives it) or ``edge_index`` / ``edge_weight``, routed by name from the bag. Without a graph
    the term is computed for a graph without edges (the KL to a standard normal prior) and a warning says so.

    Deployment: the prediction does not use the graph, so the model declares no extra inputs
    (``extra_inputs = ()``): it is exported and served with features and mask only, like ABMIL; no edges
    or coords are needed at inference. For the same reason ``forward`` takes ``(X, mask, adj, ...)`` in the
    DESIGN order, so that ``model(X, mask)`` honours the mask (the reference's ``(X, adj, mask)`` order is
    how its ``predict`` came to pass the mask into the adj slot, ignoring it; a 3-D tensor given as mask is
    refused with an error instead).

    Eval mode is deterministic: the attention logits are their mean :math:`\boldsymbol\mu_f` (one "sample"),
    not ``n_samples_test`` random samples, which is also what the exported model computes (it holds no random
    number generator). ``predict(..., return_samples=True)`` in eval draws ``n_samples_test`` random samples
    (the predictive distribution, for uncertainty maps); training draws ``n_samples_train``.

    Attention (``return_att``): the attention logits averaged over the samples, (B, N) (:math:`\boldsymbol
    \mu_f` in eval), before the masked softmax (``attention_output = "logits"``).

    Args:
        in_shape: shape of one instance, e.g. (2048,); None = lazy (inferred at the first forward).
        att_dim: the attention MLP is 2 * att_dim wide.
        covar_mode: 'diag' (learned attention variances) or 'zero' (deterministic attention, one sample).
        n_samples_train: attention samples per bag in training mode.
        n_samples_test: attention samples of ``predict(..., return_samples=True)`` in eval mode.
        feat_ext: instance feature extractor applied to X (default identity).
        criterion: loss (default BCEWithLogitsLoss for one output, CrossEntropyLoss for n_classes > 1).
        n_classes: number of outputs (1 = binary, logits (B,); C > 1 = logits (B, C)).
    """

    test_config = {"att_dim": 8, "n_samples_train": 4, "n_samples_test": 4}

    def __init__(
        self,
        in_shape: Sequence[int] | None = None,
        att_dim: int = 128,
        covar_mode: str = "diag",
        n_samples_train: int = 1000,
        n_samples_test: int = 5000,
        feat_ext: torch.nn.Module | None = None,
        criterion: torch.nn.Module | None = None,
        n_classes: int = 1,
    ) -> None:
        super().__init__()
        feat_dim = self.setup_head(feat_ext, in_shape, criterion, n_classes)
        self.setup_pool(feat_dim, att_dim, covar_mode, n_samples_train, n_samples_test)
        self.classifier = LazyLinear(feat_dim, n_classes)

    def _instances(self, X: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """The instance embeddings the pool attends over: feat_ext(X) (B, N, D)."""
        return self.feat_ext(X)


@register_model
class SmoothABMIL(ProbSmoothABMIL):
    r"""Attention-based MIL with smooth (deterministic) attention: :class:`ProbSmoothABMIL` with
    ``covar_mode='zero'`` and one sample, so the attention logits are :math:`\boldsymbol\mu_f` in training as
    in eval, and the smoothness term is the Dirichlet energy :math:`\frac1{n_b}\boldsymbol\mu^\top (I - A)
    \boldsymbol\mu` (loss key ``'DirEnergy'``).

    Args:
        in_shape: shape of one instance, e.g. (2048,); None = lazy (inferred at the first forward).
        att_dim: the attention MLP is 2 * att_dim wide.
        feat_ext: instance feature extractor applied to X (default identity).
        criterion: loss (default BCEWithLogitsLoss for one output, CrossEntropyLoss for n_classes > 1).
        n_classes: number of outputs (1 = binary, logits (B,); C > 1 = logits (B, C)).
    """

    test_config = {"att_dim": 8}
    smoothness_loss_name: ClassVar[str] = "DirEnergy"

    def __init__(
        self,
        in_shape: Sequence[int] | None = None,
        att_dim: int = 128,
        feat_ext: torch.nn.Module | None = None,
        criterion: torch.nn.Module | None = None,
        n_classes: int = 1,
    ) -> None:
        super().__init__(
            in_shape=in_shape,
            att_dim=att_dim,
            covar_mode="zero",
            n_samples_train=1,
            n_samples_test=1,
            feat_ext=feat_ext,
            criterion=criterion,
            n_classes=n_classes,
        )
