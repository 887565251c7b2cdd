"""The call routing every probabilistic-smooth-attention model shares: ``forward``, ``compute_loss`` and
``predict`` around :class:`~milsdk.nn.attention.ProbSmoothAttentionPool` (Castro-Macías et al., 2025).

A subclass builds ``self.pool`` (:meth:`ProbSmoothMILModel.setup_pool`) and ``self.classifier`` (D -> C)
and implements one method, ``_instances(X, mask) -> H`` (B, N, D), the instance embeddings the pool attends
over (the feature extractor alone for ProbSmoothABMIL, then a transformer encoder for
TransformerProbSmoothABMIL); this base samples the attention, classifies every sample's pooled vector and adds
the smoothness term. The graph enters only that term, so the model declares no extra inputs. TorchScript
compiles the inherited methods against the subclass's ``_instances``.
"""

from __future__ import annotations

import warnings
from typing import ClassVar, Optional

import torch

from milsdk.errors import ModelConfigError
from milsdk.models.mil_model import MILModel
from milsdk.nn.attention import ProbSmoothAttentionPool

__all__ = ["ProbSmoothMILModel"]


class ProbSmoothMILModel(MILModel):
    """Base of models that pool with probabilistic smooth attention (see the module docstring).

    Subclasses define ``_instances(X, mask)`` returning the instance embeddings H (B, N, D), build
    ``self.pool`` with :meth:`setup_pool` and set ``self.classifier``; ``smoothness_loss_name`` names the
    smoothness term in the loss dict.
    """

    attention_output = "logits"
    extra_inputs = ()
    #: name of the smoothness term in the loss dict
    smoothness_loss_name: ClassVar[str] = "KLDiv"

    def setup_pool(
        self, feat_dim: int | None, att_dim: int, covar_mode: str, n_samples_train: int, n_samples_test: int
    ) -> None:
        """Set ``self.pool``, a :class:`~milsdk.nn.attention.ProbSmoothAttentionPool` over D = ``feat_dim``
        (None = lazy), its bad arguments reported as a ModelConfigError naming the model."""
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
        H = self._instances(X, mask)
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
            logits (B,) or (B, C), the mean over the samples; losses ``{criterion name,
            smoothness_loss_name}`` (``'KLDiv'``; ``'DirEnergy'`` for SmoothABMIL).
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
        honoured; the graph is not needed).

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
