"""TransformerProbSmoothABMIL: a transformer encoder over the instances (global interactions), then
probabilistic smooth attention pooling (local interactions through the smoothness prior) (Castro-Macías et
al., 2025, "Probabilistic smooth attention for deep multiple instance learning in medical imaging")."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Optional

import torch

from milsdk.errors import ModelConfigError
from milsdk.models.mil_model import MILModel
from milsdk.models.registry import register_model
from milsdk.nn.attention import ProbSmoothAttentionPool
from milsdk.nn.transformers import TransformerEncoder

__all__ = ["TransformerProbSmoothABMIL"]


@register_model
class TransformerProbSmoothABMIL(MILModel):
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

    attention_output = "logits"
    extra_inputs = ()
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
        try:
            self.pool = ProbSmoothAttentionPool(
                in_dim=feat_dim,
                att_dim=pool_att_dim,
                covar_mode=covar_mode,
                n_samples_train=n_samples_train,
                n_samples_test=n_samples_test,
            )
        except ValueError as exc:
            raise ModelConfigError(f"TransformerProbSmoothABMIL: {exc}") from exc
        self.classifier = torch.nn.Linear(feat_dim, n_classes)

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
        H = self.transformer_encoder(self.feat_ext(X), mask)
        # forward without return_att gives a tensor (TorchScript refinement)
        assert isinstance(H, torch.Tensor)
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
            logits (B,) or (B, C), the mean over the samples; losses ``{criterion name, 'KLDiv'}``.
        """
        if adj is None and edge_index is None:
            warnings.warn(
                "TransformerProbSmoothABMIL.compute_loss got no graph (adj or edge_index): the KLDiv term is "
                "computed for a graph without edges",
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
        losses["KLDiv"] = kl_div
        return samples.mean(dim=1), losses

    @torch.no_grad()
    def predict(
        self,
        X: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_inst_pred: bool = True,
        return_samples: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Bag logits and, with ``return_inst_pred``, the attention logits as instance scores.

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
