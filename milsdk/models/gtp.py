"""GTP: graph-transformer for whole-slide images (Zheng et al., IEEE TMI 2022, "A Graph-Transformer for Whole
Slide Image Classification"), masked and served from edge lists.

Instance encoder (``feat_ext``) -> graph convolution over the bag's graph -> soft assignment to K clusters and
min-cut pooling -> transformer over [class token; K cluster tokens] -> linear classifier on the class token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from milsdk.errors import ModelConfigError
from milsdk.models.mil_model import MILModel
from milsdk.models.registry import register_model
from milsdk.nn.adjacency import resolve_edges
from milsdk.nn.gnns import GCNConv, dense_mincut_pool
from milsdk.nn.masked import as_bool_mask, normalize_weights
from milsdk.nn.transformers import TransformerEncoder

__all__ = ["GTP"]

# The transformer MLP's activation: GELU (milsdk's transformers) or ReLU (torchmil 1.0.2's GTP, whose encoder is
# the relevance-propagation one of torchmil.nn.relprop).
_MLP_ACTIVATIONS = {"gelu": torch.nn.GELU, "relu": torch.nn.ReLU}


@register_model
class GTP(MILModel):
    r"""Graph-transformer with a per-bag mask and an edge-list graph.

    For a bag :math:`X` (after ``feat_ext``) with adjacency :math:`A`:

    .. math::
        H = \operatorname{ReLU}\big(W (A X + X) + b\big),\qquad
        S = \operatorname{softmax}_K(H W_S + b_S) \in \mathbb{R}^{N \times K},\qquad
        X' = S^\top H,

        Z = \operatorname{Transformer}([\text{cls}; X']),\qquad \hat y = W_c Z_0 + b_c

    with the min-cut regularisers of the pooling (Bianchi et al., 2020; :func:`~milsdk.nn.gnns.
    dense_mincut_pool`) as extra losses: ``compute_loss`` returns ``{criterion name, "MinCutLoss",
    "OrthoLoss"}`` (as the reference, added with weight 1 by the Trainer). The self loops of the graph
    convolution are added for real instances only, and padded instances get no cluster mass (their rows of S
    are 0), so a bag's outputs and losses do not depend on its padding.

    Cost: the assignment S is N x K, dense by design (soft clustering); the pooled adjacency
    :math:`S^\top (A S)` is computed on the edge list (O(E K)), never with an N x N matrix. The transformer
    runs over K + 1 tokens only, its last layer for the class token alone.

    Attention (``return_att``): the class token's attention over the K cluster tokens in the last layer,
    averaged over heads, :math:`a_k`, mapped back to the instances through the soft assignments and
    renormalised over the real instances,

    .. math:: \text{att}_i = \frac{\sum_k S_{ik}\, a_k}{\sum_{j \in \text{real}} \sum_k S_{jk}\, a_k}

    (``attention_output = "weights"``: positive on every real instance, 0 on padding, sums to 1). The
    reference instead returns a class-activation map by relevance propagation (GraphCAM, ``return_cam``),
    which can be negative and is not a distribution; relevance propagation is not implemented here.

    Deviations from the reference (torchmil 1.0.2): the mask reaches the graph convolution (no self loop
    for padding), ``adj`` may be dense, sparse or replaced by ``edge_index`` / ``edge_weight`` with the same
    outputs, the forward follows the common contract (``return_att`` instead of ``return_cam`` /
    ``return_loss``; the losses come from ``compute_loss``), ``n_classes`` outputs. Deterministic in eval
    (only dropout is random).

    Args:
        in_shape: shape of one instance, e.g. (1024,) (required: the class token and the transformer need the
            feature size).
        att_dim: width of the transformer's attention and MLP.
        n_clusters: K, the number of min-cut clusters (tokens).
        n_layers: transformer layers.
        n_heads: attention heads (must divide ``att_dim``).
        use_mlp: MLP sub-block in each transformer layer.
        dropout: dropout of the transformer.
        feat_ext: instance feature extractor applied to X (default identity).
        criterion: loss (default BCEWithLogitsLoss for one output, CrossEntropyLoss for n_classes > 1).
        n_classes: number of outputs (1 = binary, logits (B,); C > 1 = logits (B, C)).
        mlp_activation: activation inside the transformer MLP, ``"gelu"`` or ``"relu"`` (torchmil 1.0.2's GTP:
            with it the logits equal torchmil's, see :func:`milsdk.models.from_torchmil`).
    """

    extra_inputs = ("adj",)
    attention_output = "weights"
    test_config = {"att_dim": 16, "n_clusters": 4, "n_heads": 2}
    # MILModel's Python-only properties, skipped by torch.jit.script (they read __dict__).
    __jit_unused_properties__ = ["config", "in_shape", "n_outputs"]

    def __init__(
        self,
        in_shape: Sequence[int] | None = None,
        att_dim: int = 512,
        n_clusters: int = 100,
        n_layers: int = 1,
        n_heads: int = 8,
        use_mlp: bool = True,
        dropout: float = 0.0,
        feat_ext: torch.nn.Module | None = None,
        criterion: torch.nn.Module | None = None,
        n_classes: int = 1,
        *,
        mlp_activation: str = "gelu",
    ) -> None:
        super().__init__()
        if mlp_activation not in _MLP_ACTIVATIONS:
            raise ModelConfigError(
                f"GTP: mlp_activation={mlp_activation!r}, expected one of {tuple(_MLP_ACTIVATIONS)}"
            )
        if in_shape is None:
            raise ModelConfigError("GTP needs in_shape: the class token and encoder take the feature size")
        if n_clusters < 1:
            raise ModelConfigError(f"GTP: n_clusters must be >= 1, got {n_clusters}")
        if att_dim < 1 or n_heads < 1 or att_dim % n_heads != 0:
            raise ModelConfigError(f"GTP: n_heads={n_heads} must divide att_dim={att_dim}")
        feat_dim = self.setup_head(feat_ext, in_shape, criterion, n_classes)
        assert feat_dim is not None
        self.gcn_conv = GCNConv(
            feat_dim, feat_dim, add_self_loops=True, learn_weights=True, activation=torch.nn.ReLU()
        )
        self.cluster_proj = torch.nn.Linear(feat_dim, n_clusters)
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, feat_dim))
        self.transformer_encoder = TransformerEncoder(
            in_dim=feat_dim,
            out_dim=feat_dim,
            att_dim=att_dim,
            n_heads=n_heads,
            n_layers=n_layers,
            use_mlp=use_mlp,
            dropout=dropout,
        )
        for layer in self.transformer_encoder.layers:
            if layer.mlp_module is not None:  # default_mlp's layout: Linear, activation, Dropout, Linear, Dropout
                layer.mlp_module[1] = _MLP_ACTIVATIONS[mlp_activation]()
        self.classifier = torch.nn.Linear(feat_dim, n_classes)

    def _forward(
        self,
        X: torch.Tensor,
        adj: torch.Tensor | None,
        mask: torch.Tensor | None,
        edge_index: torch.Tensor | None,
        edge_weight: torch.Tensor | None,
        need_att: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """logits, attention (B, N) (empty unless ``need_att``), min-cut loss, orthogonality loss."""
        H = self.feat_ext(X)
        edge_index, edge_weight = resolve_edges(H, adj, edge_index, edge_weight, mask)
        H = self.gcn_conv(H, mask=mask, edge_index=edge_index, edge_weight=edge_weight)
        S = self.cluster_proj(H)  # (B, N, K) logits
        pooled, _, mincut_loss, ortho_loss = dense_mincut_pool(
            H, None, S, mask, edge_index=edge_index, edge_weight=edge_weight
        )
        B = pooled.shape[0]
        tokens = torch.cat([self.cls_token.to(pooled.dtype).expand(B, 1, pooled.shape[2]), pooled], dim=1)
        Z, weights = self.transformer_encoder.forward_first(tokens, None, 1)  # (B, 1, D), (B, h, 1, K + 1)
        logits = self.squeeze_binary(self.classifier(Z[:, 0]))
        if not need_att:
            return logits, logits.new_zeros(0), mincut_loss, ortho_loss
        cluster_att = weights.mean(dim=1)[:, 0, 1:]  # (B, K), the class token's attention on the clusters
        assign = torch.softmax(S.float(), dim=-1)  # the pooling's soft assignment (temperature 1)
        att = (assign @ cluster_att.float().unsqueeze(-1)).squeeze(-1)  # (B, N)
        att = normalize_weights(att, as_bool_mask(mask, att))
        return logits, att.to(logits.dtype), mincut_loss, ortho_loss

    def forward(
        self,
        X: torch.Tensor,
        adj: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        return_att: bool = False,
        edge_index: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Bag logits.

        Args:
            X: (B, N, *in_shape) instance features.
            adj: (B, N, N) dense or sparse adjacency (the training form); None when ``edge_index`` is given.
            mask: (B, N) True / 1 = real instance (bool or uint8); None = all real.
            return_att: also return the instance attention.
            edge_index: (B, 2, E) int64 edge list (the serving form; used instead of ``adj``).
            edge_weight: (B, E) float32 weights of ``edge_index``, padded edges 0 (None = 1).

        Returns:
            logits (B,) for one output or (B, C); with ``return_att`` also attention (B, N): the class token's
            cluster attention mapped to the instances, a distribution over the real instances (0 on padding).
        """
        logits, att, _, _ = self._forward(X, adj, mask, edge_index, edge_weight, return_att)
        if return_att:
            return logits, att
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
        """Forward pass, the criterion and the min-cut regularisers.

        Args:
            Y: (B,) bag labels; X, adj, mask, edge_index, edge_weight: as in :meth:`forward`.

        Returns:
            logits (B,) or (B, C); losses ``{criterion name, "MinCutLoss", "OrthoLoss"}`` (scalars, batch
            means of per-bag values).
        """
        logits, _, mincut_loss, ortho_loss = self._forward(X, adj, mask, edge_index, edge_weight, False)
        losses = self.bag_loss(logits, Y)
        losses["MinCutLoss"] = mincut_loss
        losses["OrthoLoss"] = ortho_loss
        return logits, losses

    @torch.no_grad()
    def predict(
        self,
        X: torch.Tensor,
        adj: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        return_inst_pred: bool = True,
        edge_index: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Bag logits and, with ``return_inst_pred``, the instance attention (B, N) as instance scores.

        Args:
            X, adj, mask, edge_index, edge_weight: as in :meth:`forward`.
        """
        logits, att, _, _ = self._forward(X, adj, mask, edge_index, edge_weight, return_inst_pred)
        if return_inst_pred:
            return logits, att
        return logits
