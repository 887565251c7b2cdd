"""PatchGCN: a whole slide as a graph of patches (Chen et al., MICCAI 2021, "Whole Slide Images are 2D Point Clouds:
Context-Aware Survival Prediction using Patch-based Graph Convolutional Networks"), masked and served from edge
lists.

Instance encoder (``feat_ext``) -> a stack of graph convolutions whose input and outputs are concatenated -> MLP ->
attention pooling -> linear classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from milsdk.errors import ModelConfigError
from milsdk.models.graph_model import GraphMILModel
from milsdk.models.registry import register_model
from milsdk.nn.adjacency import resolve_edges
from milsdk.nn.attention import AttentionPool
from milsdk.nn.gnns import DeepGCNLayer, GCNConv
from milsdk.nn.linear import LazyLinear

__all__ = ["PatchGCN"]


@register_model
class PatchGCN(GraphMILModel):
    r"""Patch-graph convolutional MIL with a per-bag mask and an edge-list graph.

    For a bag :math:`H^{(0)} = \text{feat\_ext}(X)` with adjacency :math:`A` (use a normalised one, e.g.
    ``milsdk.utils.graph.normalize_adj``):

    .. math::
        H^{(l)} = \operatorname{ReLU}\Big(\operatorname{LN}\big(W_l (A H^{(l-1)} + H^{(l-1)}) + b_l\big)\Big),
        \quad l = 1..L,\qquad G = \operatorname{MLP}\big([H^{(0)}, H^{(1)}, \dots, H^{(L)}]\big),

        f_i = w^\top \tanh(V g_i),\qquad z = \sum_i \operatorname{softmax}_{i \in \text{real}}(f)_i\, g_i,
        \qquad \hat y = W_c z + b_c

    (L = ``n_gcn_layers`` DeepGCN 'plain' blocks of :class:`~milsdk.nn.gnns.GCNConv` with self loops and
    learned weights, LayerNorm and ReLU, as in the reference; the MLP is ``mlp_depth`` Linear + ReLU +
    dropout layers to ``hidden_dim``). Every product :math:`A H` runs on the edge list: O(N k + E) memory.

    Deviations from the reference (torchmil 1.0.2), each a fix or the common contract:

    - ``adj`` may be dense, sparse or replaced by ``edge_index`` / ``edge_weight`` (the serving form), with the
      same outputs; edges touching padded instances are dropped and self loops are added for real instances
      only, so a bag's outputs do not depend on its padding (the reference adds padding's rows to A X when
      ``adj`` links them);
    - ``in_shape=None`` works (lazy layers) when ``hidden_dim`` is given; without both, a clear
      ``ModelConfigError`` (the reference fails in ``get_feat_dim``);
    - ``predict`` returns the instance scores by default (``return_inst_pred=True``, the common contract; the
      reference defaults to False);
    - ``n_classes`` outputs (the reference is binary only).

    Attention (``return_att``): the pool's logits f (B, N) before the masked softmax, as in the reference
    (``attention_output = "logits"``). Deterministic in eval (only dropout is random).

    Args:
        in_shape: shape of one instance, e.g. (1024,); None = lazy (then ``hidden_dim`` is required).
        n_gcn_layers: number of graph convolution blocks L.
        mlp_depth: number of Linear + ReLU + dropout layers after the concatenation.
        hidden_dim: width of the graph convolutions and the MLP (None = the feature size).
        att_dim: hidden size of the attention pool.
        dropout: dropout rate of the graph blocks and the MLP.
        feat_ext: instance feature extractor applied to X (default identity).
        criterion: loss (default BCEWithLogitsLoss for one output, CrossEntropyLoss for n_classes > 1).
        n_classes: number of outputs (1 = binary, logits (B,); C > 1 = logits (B, C)).
    """

    test_config = {"n_gcn_layers": 2, "hidden_dim": 8, "att_dim": 8}
    # MILModel's Python-only properties, skipped by torch.jit.script (they read __dict__).
    __jit_unused_properties__ = ["config", "in_shape", "n_outputs"]

    def __init__(
        self,
        in_shape: Sequence[int] | None,
        n_gcn_layers: int = 4,
        mlp_depth: int = 1,
        hidden_dim: int | None = None,
        att_dim: int = 128,
        dropout: float = 0.0,
        feat_ext: torch.nn.Module | None = None,
        criterion: torch.nn.Module | None = None,
        n_classes: int = 1,
    ) -> None:
        super().__init__()
        if n_gcn_layers < 0 or mlp_depth < 0:
            raise ModelConfigError(
                f"PatchGCN: n_gcn_layers and mlp_depth must be >= 0, got {n_gcn_layers} and {mlp_depth}"
            )
        feat_dim = self.setup_head(feat_ext, in_shape, criterion, n_classes)
        if hidden_dim is None:
            if feat_dim is None:
                raise ModelConfigError("PatchGCN: give in_shape or hidden_dim (the width of the graph layers)")
            hidden_dim = feat_dim
        self.gcn_layers = torch.nn.ModuleList(
            DeepGCNLayer(
                GCNConv(feat_dim if i == 0 else hidden_dim, hidden_dim, add_self_loops=True, learn_weights=True),
                torch.nn.LayerNorm(hidden_dim),
                torch.nn.ReLU(),
                block="plain",
                dropout=dropout,
            )
            for i in range(n_gcn_layers)
        )
        concat_dim = None if feat_dim is None else feat_dim + hidden_dim * n_gcn_layers
        self.mlp = torch.nn.ModuleList(
            torch.nn.Sequential(
                LazyLinear(concat_dim if i == 0 else hidden_dim, hidden_dim), torch.nn.ReLU(), torch.nn.Dropout(dropout)
            )
            for i in range(mlp_depth)
        )
        pooled_dim = hidden_dim if mlp_depth > 0 else concat_dim
        self.pool = AttentionPool(in_dim=pooled_dim, att_dim=att_dim)
        self.classifier = LazyLinear(pooled_dim, n_classes)

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
        features = [H]
        for layer in self.gcn_layers:
            H = layer(H, mask=mask, edge_index=edge_index, edge_weight=edge_weight)
            features.append(H)
        G = torch.cat(features, dim=-1)  # (B, N, D + L * hidden_dim)
        for layer in self.mlp:
            G = layer(G)
        z, f = self.pool.pool_with_logits(G, mask)
        return self.squeeze_binary(self.classifier(z)), f
