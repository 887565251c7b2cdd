"""CAMIL: context-aware MIL (Fourkioti, De Vries, Bakal, ICLR 2024, "CAMIL: Context-Aware Multiple Instance
Learning for Cancer Detection and Subtyping in Whole Slide Images"), masked and served from edge lists.

Instance encoder (``feat_ext``, Linear to ``nystrom_att_dim``) -> masked Nyström transformer layer (global
context T) -> neighbour-constrained attention over the bag's graph (local context L) -> sigmoid gate mixing
L and T -> attention pooling (scores from T, pooled over the mix) -> linear classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from milsdk.errors import ModelConfigError
from milsdk.models.graph_model import GraphMILModel
from milsdk.models.registry import register_model
from milsdk.nn.adjacency import resolve_edges
from milsdk.nn.attention.camil_attention_pool import CAMILAttentionPool
from milsdk.nn.attention.camil_self_attention import CAMILSelfAttention
from milsdk.nn.attention.neighbour_attention import NeighbourAttention
from milsdk.nn.attention.nystrom_attention import LANDMARK_SCHEMES
from milsdk.nn.linear import LazyLinear
from milsdk.nn.transformers import NystromTransformerLayer
from milsdk.nn.transformers.layer import linear_or_identity

# CAMILSelfAttention and CAMILAttentionPool are re-exported at torchmil's path (torchmil.models.camil).
__all__ = ["CAMIL", "CAMILAttentionPool", "CAMILSelfAttention"]

# The local-context blocks CAMIL(local_attention=...) can use (see the class docstring).
LOCAL_ATTENTIONS = ("neighbours", "torchmil")


@register_model
class CAMIL(GraphMILModel):
    r"""Context-aware MIL with a per-bag mask and an edge-list graph.

    For a bag with instances :math:`h_i = W\,\text{feat\_ext}(x_i) + b` (the Linear only when the feature size
    differs from ``nystrom_att_dim``, as in the reference) and adjacency :math:`A`:

    .. math::
        T = \operatorname{NystromLayer}(H, \text{mask}),\qquad
        L = \operatorname{LocalAttention}(T, A),\qquad
        M = \sigma(L) \odot L + (1 - \sigma(L)) \odot T,

        f_i = w^\top \big(\tanh(V t_i) \odot \sigma(U t_i)\big),\qquad
        z = \sum_i \operatorname{softmax}_{i \in \text{real}}(f)_i\, m_i,\qquad \hat y = W_c z + b_c

    (the gate :math:`\sigma(U t_i)` only with ``gated_pool``; the attention scores come from the global
    context T, the pooled vectors from the mix M, as in the paper: :class:`~milsdk.nn.attention.
    CAMILAttentionPool`). The local attention is, by default (``local_attention="neighbours"``),
    :class:`~milsdk.nn.attention.NeighbourAttention`: each instance attends to its graph neighbours, scores per
    edge and softmax over each node's edges, :math:`l_i = \sum_{j \in \mathcal N(i)} \alpha_{ij} v_j`
    (the paper's neighbour-constrained attention). O(E), never N x N.

    torchmil's CAMIL (1.0.2) computes another local context (``torchmil.models.camil.CAMILSelfAttention``): it
    sums each instance's neighbour scores into one score :math:`w_i = \sum_j a_{ij} q_i^\top k_j / \sqrt d`
    (from the dense N x N product :math:`QK^\top \odot A`), softmaxes those over the whole bag and scales the
    instance's own value, :math:`l_i = \operatorname{softmax}(w)_i\, v_i`. milsdk's default follows the paper
    (an attention over the neighbours, which this gate is not: a node's neighbours' values never reach it, and
    the gate shrinks as 1/N with the bag size). ``local_attention="torchmil"`` computes torchmil's function with
    :class:`~milsdk.nn.attention.CAMILSelfAttention` on the edge list (a scatter sum over edges, O(E), and a
    softmax over the bag's real instances, so it stays padding-invariant); with ``landmarks="torchmil"`` the
    model computes what torchmil's CAMIL computes on each bag alone (what :func:`milsdk.models.from_torchmil`
    builds). The block is held as ``camil_self_attention`` (torchmil's name) instead of
    ``neighbour_attention``; everything else (other weights, export, serving inputs) is the same.

    Deviations from the reference (torchmil 1.0.2), each a fix:

    - the Nyström layer gets the mask (the reference never passes it, so padding leaks into real tokens);
    - ``n_landmarks=None`` means ``max(nystrom_att_dim // 2, 1)`` (as TransMIL), where the reference crashes
      (defect 8.4);
    - the local attention is the paper's softmax over each node's neighbours on the edge list, not the
      reference's densified (N x N) node score softmaxed over the whole bag (unless
      ``local_attention="torchmil"``);
    - ``adj`` may be dense, sparse or replaced by ``edge_index`` / ``edge_weight`` (the serving form), with
      the same outputs; edges touching padded instances are dropped;
    - ``n_classes`` outputs (the reference is binary only).

    Attention (``return_att``): the pool's logits f (B, N) before the masked softmax, as in the reference
    (``attention_output = "logits"``). Deterministic in eval (only dropout is random).

    Args:
        in_shape: shape of one instance, e.g. (1024,); None = lazy (inferred at the first forward; the input
            Linear is then always present).
        nystrom_att_dim: width of the Nyström layer, the neighbour attention and the pooled vector.
        pool_att_dim: hidden size of the attention pool.
        gated_pool: gated attention pooling.
        n_heads: heads of the Nyström layer (must divide ``nystrom_att_dim``).
        n_landmarks: maximum Nyström landmarks per bag (None = ``max(nystrom_att_dim // 2, 1)``).
        pinv_iterations: pseudo-inverse iterations of the Nyström layer.
        dropout: dropout of the Nyström layer.
        use_mlp: MLP sub-block in the Nyström layer.
        feat_ext: instance feature extractor applied to X (default identity).
        criterion: loss (default BCEWithLogitsLoss for one output, CrossEntropyLoss for n_classes > 1).
        n_classes: number of outputs (1 = binary, logits (B,); C > 1 = logits (B, C)).
        local_attention: the local-context block, ``"neighbours"`` (the paper's neighbour attention) or
            ``"torchmil"`` (torchmil 1.0.2's CAMILSelfAttention, on the edge list).
        landmarks: the Nyström layer's landmark scheme, ``"segments"`` or ``"torchmil"`` (see
            :class:`milsdk.nn.attention.NystromAttention`).
    """

    test_config = {"nystrom_att_dim": 16, "pool_att_dim": 8, "n_heads": 2, "n_landmarks": 4}
    # MILModel's Python-only properties, skipped by torch.jit.script (they read __dict__).
    __jit_unused_properties__ = ["config", "in_shape", "n_outputs"]

    def __init__(
        self,
        in_shape: Sequence[int] | None = None,
        nystrom_att_dim: int = 512,
        pool_att_dim: int = 128,
        gated_pool: bool = False,
        n_heads: int = 4,
        n_landmarks: int | None = None,
        pinv_iterations: int = 6,
        dropout: float = 0.0,
        use_mlp: bool = False,
        feat_ext: torch.nn.Module | None = None,
        criterion: torch.nn.Module | None = None,
        n_classes: int = 1,
        *,
        local_attention: str = "neighbours",
        landmarks: str = "segments",
    ) -> None:
        super().__init__()
        if local_attention not in LOCAL_ATTENTIONS:
            raise ModelConfigError(
                f"CAMIL: local_attention={local_attention!r}, expected one of {LOCAL_ATTENTIONS}"
            )
        if landmarks not in LANDMARK_SCHEMES:
            raise ModelConfigError(f"CAMIL: landmarks={landmarks!r}, expected one of {LANDMARK_SCHEMES}")
        if nystrom_att_dim < 1 or n_heads < 1 or nystrom_att_dim % n_heads != 0:
            raise ModelConfigError(f"CAMIL: n_heads={n_heads} must divide nystrom_att_dim={nystrom_att_dim}")
        n_landmarks = max(nystrom_att_dim // 2, 1) if n_landmarks is None else n_landmarks
        if n_landmarks < 1:
            raise ModelConfigError(f"CAMIL: n_landmarks must be >= 1, got {n_landmarks}")
        feat_dim = self.setup_head(feat_ext, in_shape, criterion, n_classes)
        self.n_landmarks = n_landmarks
        if feat_dim is None:
            self.fc1: torch.nn.Module = LazyLinear(None, nystrom_att_dim)
        else:
            self.fc1 = linear_or_identity(feat_dim, nystrom_att_dim)
        self.nystrom_transformer_layer = NystromTransformerLayer(
            in_dim=nystrom_att_dim,
            att_dim=nystrom_att_dim,
            n_heads=n_heads,
            n_landmarks=n_landmarks,
            pinv_iterations=pinv_iterations,
            dropout=dropout,
            use_mlp=use_mlp,
        )
        # The layer builds the default scheme; the attribute is all that selects it (no weights).
        self.nystrom_transformer_layer.att.landmarks = landmarks
        # One of the two is None (TorchScript then compiles only the other's branch).
        self.neighbour_attention: NeighbourAttention | None = None
        self.camil_self_attention: CAMILSelfAttention | None = None
        if local_attention == "torchmil":
            self.camil_self_attention = CAMILSelfAttention(nystrom_att_dim, att_dim=nystrom_att_dim)
        else:
            self.neighbour_attention = NeighbourAttention(nystrom_att_dim, att_dim=nystrom_att_dim)
        self.pool = CAMILAttentionPool(in_dim=nystrom_att_dim, att_dim=pool_att_dim, gated=gated_pool)
        self.classifier = torch.nn.Linear(nystrom_att_dim, n_classes)

    def _forward(
        self,
        X: torch.Tensor,
        adj: torch.Tensor | None,
        mask: torch.Tensor | None,
        edge_index: torch.Tensor | None,
        edge_weight: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        H = self.fc1(self.feat_ext(X))  # (B, N, d)
        edge_index, edge_weight = resolve_edges(H, adj, edge_index, edge_weight, mask)
        T, _ = self.nystrom_transformer_layer.forward_att(H, mask)
        if self.camil_self_attention is not None:
            L, _ = self.camil_self_attention.attend_edges(T, edge_index, edge_weight, mask)
        else:
            assert self.neighbour_attention is not None  # __init__ builds exactly one of the two
            L, _ = self.neighbour_attention.attend_edges(T, edge_index, edge_weight)
        gate = torch.sigmoid(L)
        M = gate * L + (1 - gate) * T
        z, f = self.pool.forward_att(T, M, mask)  # (B, d), (B, N)
        return self.squeeze_binary(self.classifier(z)), f
