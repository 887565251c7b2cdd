"""DeepGraphSurv: graph CNN for survival analysis on whole slides (Li, Yao, Zhu, Huang, MICCAI 2018, "Graph CNN for
Survival Analysis on Whole Slide Pathological Images"), masked and served from edge lists.

Instance encoder (``feat_ext``) -> two Chebyshev graph-convolution branches, one for instance representations
and one for attention scores -> attention pooling -> linear head: a bag risk score (survival, with
:class:`~milsdk.nn.survival.CoxPHLoss`) or class logits (with a classification criterion, the reference's
default).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from milsdk.errors import ModelConfigError
from milsdk.models.graph_model import GraphMILModel
from milsdk.models.registry import register_model
from milsdk.nn.adjacency import resolve_edges
from milsdk.nn.gnns import ChebConv
from milsdk.nn.gnns.chebconv import TERM_LAYOUTS, laplacian_lambda_max
from milsdk.nn.linear import LazyLinear
from milsdk.nn.masked import masked_softmax

__all__ = ["DeepGraphSurv"]


@register_model
class DeepGraphSurv(GraphMILModel):
    r"""Spectral-graph attention MIL for survival (or classification), with a per-bag mask and an edge list.

    For a bag :math:`H = \text{feat\_ext}(X)` with adjacency :math:`A`, two branches of Chebyshev convolutions
    (:class:`~milsdk.nn.gnns.ChebConv`, order K, each followed by ReLU and dropout):

    .. math::
        R = \operatorname{Cheb}_{rep}(H, A) \in \mathbb{R}^{N \times \texttt{hidden\_dim}},\qquad
        f = w^\top \operatorname{Cheb}_{att}(H, A) + b \in \mathbb{R}^{N},

        z = \sum_i \operatorname{softmax}_{i \in \text{real}}(f)_i\, r_i,\qquad \hat y = W_c z + b_c

    Survival (the paper): with ``criterion=CoxPHLoss()`` (:mod:`milsdk.nn.survival`) and ``n_classes=1``, the
    logit :math:`\hat y` (B,) is the bag's risk score (log hazard ratio; higher = shorter survival; the
    exported ``logits`` (B, 1)) and ``compute_loss(Y, ...)`` takes ``Y`` (B, 2) rows ``[time, event]`` (event
    1 = observed, 0 = censored) and returns ``{"CoxPHLoss": ...}``, the negative Cox partial log-likelihood of
    the batch (use batches of several bags). Evaluate with ``milsdk.utils.metrics.ConcordanceIndex`` (the
    C-index; ``Trainer(..., metrics_dict={"c_index": ConcordanceIndex()}, obj_metric="c_index")``). With the
    default criterion it is a classifier like the reference (BCEWithLogitsLoss for one output,
    CrossEntropyLoss for C > 1).

    Deviations from the reference (torchmil 1.0.2), each a fix or a documented choice:

    - ``in_shape=None`` works (lazy layers) when ``hidden_dim`` is given; without both, a clear
      ``ModelConfigError`` (the reference crashes building its layers, defect 8.4);
    - the Chebyshev terms are laid out per node: the reference reshapes each layer's (K, N, C) stack of terms
      with ``view(N, K * C)``, so row i holds the terms at slots ``i * K .. i * K + K - 1`` of the flattened
      stack (term ``s // N``, node ``s % N``): other nodes' terms, and a bag's output depended on its size and
      padding. ``term_layout="torchmil"`` computes the reference's rows, per bag over its real instances
      (real instances first, trailing padding, as collate and MILClient give; still padding-invariant), so
      that torchmil-trained weights give torchmil's outputs (``milsdk.models.from_torchmil`` sets it);
    - ``compute_lambda_max`` estimates the Laplacian's largest eigenvalue by power iteration on the edge list,
      once per bag for all layers (the reference: a dense eigen-solver of A per layer, a different quantity);
      see :class:`~milsdk.nn.gnns.ChebConv`;
    - ``adj`` may be dense, sparse or replaced by ``edge_index`` / ``edge_weight``, with the same outputs;
      edges touching padding are dropped;
    - the survival head and loss (the paper's task; the reference only classifies), ``n_classes`` outputs,
      ``predict`` returns the instance scores by default (the common contract; the reference's default is
      False).

    Attention (``return_att``): f (B, N), the attention logits before the masked softmax, as in the reference
    (``attention_output = "logits"``). Deterministic in eval (only dropout is random).

    Args:
        in_shape: shape of one instance, e.g. (1024,); None = lazy (then ``hidden_dim`` is required).
        n_layers_rep: Chebyshev layers of the representation branch (0 = the features themselves).
        n_layers_att: Chebyshev layers of the attention branch (0 = scores from the features).
        hidden_dim: width of the representation branch (None = the feature size).
        att_dim: width of the attention branch.
        dropout: dropout after every Chebyshev layer.
        K: number of Chebyshev terms.
        compute_lambda_max: estimate each bag's largest Laplacian eigenvalue (else 2.0, the reference's default).
        term_layout: ``"per_node"`` (each instance's own K Chebyshev terms) or ``"torchmil"`` (torchmil 1.0.2's
            layout, see above).
        feat_ext: instance feature extractor applied to X (default identity).
        criterion: loss: ``CoxPHLoss()`` for survival; default BCEWithLogitsLoss for one output,
            CrossEntropyLoss for n_classes > 1.
        n_classes: number of outputs (1 = binary or a risk score, logits (B,); C > 1 = logits (B, C)).
    """

    test_config = {"hidden_dim": 8, "att_dim": 8, "K": 2}
    # MILModel's Python-only properties, skipped by torch.jit.script (they read __dict__).
    __jit_unused_properties__ = ["config", "in_shape", "n_outputs"]

    def __init__(
        self,
        in_shape: Sequence[int] | None = None,
        n_layers_rep: int = 1,
        n_layers_att: int = 1,
        hidden_dim: int | None = None,
        att_dim: int = 128,
        dropout: float = 0.0,
        K: int = 5,
        compute_lambda_max: bool = False,
        feat_ext: torch.nn.Module | None = None,
        criterion: torch.nn.Module | None = None,
        n_classes: int = 1,
        term_layout: str = "per_node",
    ) -> None:
        super().__init__()
        if term_layout not in TERM_LAYOUTS:
            raise ModelConfigError(f"DeepGraphSurv: term_layout must be one of {TERM_LAYOUTS}, got {term_layout!r}")
        if n_layers_rep < 0 or n_layers_att < 0:
            raise ModelConfigError(
                f"DeepGraphSurv: n_layers_rep and n_layers_att must be >= 0, got {n_layers_rep}, {n_layers_att}"
            )
        if K < 1:
            raise ModelConfigError(f"DeepGraphSurv: K must be >= 1, got {K}")
        feat_dim = self.setup_head(feat_ext, in_shape, criterion, n_classes)
        self.survival = bool(getattr(self.criterion, "survival", False))
        if self.survival and n_classes != 1:
            raise ModelConfigError(
                f"DeepGraphSurv: a survival criterion ({type(self.criterion).__name__}) needs n_classes=1 "
                f"(one risk score per bag), got {n_classes}"
            )
        if hidden_dim is None:
            if feat_dim is None:
                raise ModelConfigError(
                    "DeepGraphSurv: give in_shape or hidden_dim (the width of the representation branch)"
                )
            hidden_dim = feat_dim
        self.dropout_prob = dropout
        self.compute_lambda_max = compute_lambda_max
        self.layers_rep = torch.nn.ModuleList(
            ChebConv(feat_dim if i == 0 else hidden_dim, hidden_dim, K=K, compute_lambda_max=compute_lambda_max,
                     term_layout=term_layout)
            for i in range(n_layers_rep)
        )
        self.layers_att = torch.nn.ModuleList(
            ChebConv(feat_dim if i == 0 else att_dim, att_dim, K=K, compute_lambda_max=compute_lambda_max,
                     term_layout=term_layout)
            for i in range(n_layers_att)
        )
        self.proj1d = LazyLinear(att_dim if n_layers_att > 0 else feat_dim, 1)
        self.classifier = LazyLinear(hidden_dim if n_layers_rep > 0 else feat_dim, n_classes)

    def _forward(
        self,
        X: torch.Tensor,
        adj: torch.Tensor | None,
        mask: torch.Tensor | None,
        edge_index: torch.Tensor | None,
        edge_weight: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        H = self.feat_ext(X)  # (B, N, D)
        edge_index, edge_weight = resolve_edges(H, adj, edge_index, edge_weight, mask)
        lambda_max: torch.Tensor | None = None
        if self.compute_lambda_max:  # one estimate per bag, shared by every layer (the graph is the same)
            lambda_max = laplacian_lambda_max(edge_index, edge_weight, H.shape[1], mask)
        R = H
        for layer in self.layers_rep:
            R = layer(R, lambda_max=lambda_max, mask=mask, edge_index=edge_index, edge_weight=edge_weight)
            R = torch.nn.functional.dropout(torch.relu(R), p=self.dropout_prob, training=self.training)
        F = H
        for layer in self.layers_att:
            F = layer(F, lambda_max=lambda_max, mask=mask, edge_index=edge_index, edge_weight=edge_weight)
            F = torch.nn.functional.dropout(torch.relu(F), p=self.dropout_prob, training=self.training)
        f = self.proj1d(F).squeeze(-1)  # (B, N)
        s = masked_softmax(f, mask)
        z = torch.bmm(s.unsqueeze(1), R).squeeze(1)
        return self.squeeze_binary(self.classifier(z)), f

    def compute_loss(
        self,
        Y: torch.Tensor,
        X: torch.Tensor,
        adj: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        edge_index: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward pass and the criterion.

        Args:
            Y: (B, 2) ``[time, event]`` rows with a survival criterion, else (B,) bag labels.
            X, adj, mask, edge_index, edge_weight: as in :meth:`forward`.

        Returns:
            logits (B,) or (B, C); losses ``{criterion name: scalar}``.
        """
        logits, _ = self._forward(X, adj, mask, edge_index, edge_weight)
        if self.survival:
            return logits, {type(self.criterion).__name__: self.criterion(logits, Y)}
        return logits, self.bag_loss(logits, Y)
