"""ProbSmoothABMIL and SmoothABMIL: attention MIL with probabilistic (or deterministic) smooth attention
(Castro-Macías et al., 2025, "Probabilistic smooth attention for deep multiple instance learning in medical
imaging"; Castro-Macías et al., 2023, "Smooth Attention for Deep Multiple Instance Learning: Application to CT
Intracranial Hemorrhage Detection").

Instance encoder (``feat_ext``) -> probabilistic attention pooling (one pooled vector per attention sample) ->
linear classifier; the graph enters only the training loss (a KL / Dirichlet-energy smoothness term).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import ClassVar, Optional

import torch

from milsdk.errors import ModelConfigError
from milsdk.models.mil_model import MILModel
from milsdk.models.registry import register_model
from milsdk.nn.attention import ProbSmoothAttentionPool
from milsdk.nn.linear import LazyLinear

__all__ = ["ProbSmoothABMIL", "SmoothABMIL"]


@register_model
class ProbSmoothABMIL(MILModel):
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

    attention_output = "logits"
    extra_inputs = ()
    test_config = {"att_dim": 8, "n_samples_train": 4, "n_samples_test": 4}
    #: name of the smoothness term in the loss dict
    smoothness_loss_name: ClassVar[str] = "KLDiv"

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
        try:
            self.pool = ProbSmoothAttentionPool(
                in_dim=feat_dim,
                att_dim=att_dim,
                covar_mode=covar_mode,
                n_samples_train=n_samples_train,
                n_samples_test=n_samples_test,
            )
        except ValueError as exc:
            raise ModelConfigError(f"{type(self).__name__}: {exc}") from exc
        self.classifier = LazyLinear(feat_dim, n_classes)

    def forward(
        self,
        X: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        adj: Optional[torch.Tensor] = None,
        return_att: bool = False,
        return_samples: bool = False,
        return_kl_div: bool = False,
        n_samples: Optional[int] = None,
        edge_index: Optional[torch.Tensor] = None,
        edge_weight: Optional[torch.Tensor] = None,
    ) -> (
        torch.Tensor
        | tuple[torch.Tensor, torch.Tensor]
        | tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ):
        """Bag logits.

        Args:
            X: (B, N, *in_shape) instance features.
            mask: (B, N) True / 1 = real instance (bool or uint8); None = all real.
            adj: (B, N, N) dense or sparse adjacency, used only with ``return_kl_div``.
            return_att: also return the attention logits.
            return_samples: return one output per attention sample instead of their mean.
            return_kl_div: also return the smoothness term (a scalar).
            n_samples: attention samples; None = ``n_samples_train`` in training, the mean in eval.
            edge_index: (B, 2, E) int64, edge_weight: (B, E): the graph as an edge list (instead of adj).

        Returns:
            logits (B,) or (B, C), or per sample (B, S) or (B, S, C) with ``return_samples``; with
            ``return_att`` also the attention logits (B, N), or (B, N, S) with ``return_samples``; with
            ``return_kl_div`` the smoothness term last.
        """
        if mask is not None and mask.dim() != 2:
            raise ValueError(
                "mask must be (B, N); the arguments are (X, mask, adj, ...): pass adj=... by keyword"
            )
        H = self.feat_ext(X)
        z, f, mu_f, log_diag_Sigma_f = self.pool.pool_samples(H, mask, n_samples)
        logits = self.classifier(z.transpose(1, 2))
        if self.n_classes == 1:
            logits = logits.squeeze(-1)
        if not return_samples:
            logits = logits.mean(dim=1)
            f = f.mean(dim=-1)
        if return_kl_div:
            kl_div = self.pool.graph_kl_div(H, mu_f, log_diag_Sigma_f, mask, adj, edge_index, edge_weight)
            if return_att:
                return logits, f, kl_div
            return logits, kl_div
        if return_att:
            return logits, f
        return logits

    def compute_loss(
        self,
        Y: torch.Tensor,
        X: torch.Tensor,
        adj: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        edge_index: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward pass, the criterion on every attention sample, and the smoothness term.

        Args:
            Y: (B,) bag labels.
            X: (B, N, *in_shape); adj: (B, N, N) dense or sparse (or the edge list ``edge_index`` (B, 2, E),
                ``edge_weight`` (B, E)); mask: (B, N).

        Returns:
            logits (B,) or (B, C), the mean over the samples; losses ``{criterion name, 'KLDiv'}``
            (``'DirEnergy'`` for SmoothABMIL).
        """
        if adj is None and edge_index is None:
            warnings.warn(
                f"{type(self).__name__}.compute_loss got no graph (adj or edge_index): the "
                f"{self.smoothness_loss_name} term is computed for a graph without edges",
                stacklevel=2,
            )
        out = self(
            X,
            mask=mask,
            adj=adj,
            return_samples=True,
            return_kl_div=True,
            edge_index=edge_index,
            edge_weight=edge_weight,
        )
        samples, kl_div = out[0], out[-1]
        n_samples = samples.shape[1]
        flat = samples.reshape((-1,) + tuple(samples.shape[2:]))
        losses = self.bag_loss(flat, Y.reshape(-1).repeat_interleave(n_samples))
        losses[self.smoothness_loss_name] = kl_div
        return samples.mean(dim=1), losses

    @torch.no_grad()
    def predict(
        self,
        X: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_inst_pred: bool = True,
        return_samples: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Bag logits and, with ``return_inst_pred``, the attention logits as instance scores (the mask is
        honoured).

        Args:
            X: (B, N, *in_shape); mask: (B, N).
            return_inst_pred: also return the instance scores.
            return_samples: per-sample outputs, from ``n_samples_test`` random samples in eval mode
                (``n_samples_train`` in training mode).

        Returns:
            logits (B,) or (B, C) ((B, S) or (B, S, C) with ``return_samples``); with ``return_inst_pred``
            also (B, N) ((B, N, S)).
        """
        n_samples = self.pool.n_samples_test if return_samples and not self.training else None
        return self(
            X, mask=mask, return_att=return_inst_pred, return_samples=return_samples, n_samples=n_samples
        )


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
