"""TransMIL: transformer-based correlated MIL (Shao et al., NeurIPS 2021), padding-invariant and exportable.

Instance encoder (``feat_ext``, Linear + ReLU) -> square the sequence, prepend a class token -> Nyström layer
-> PPEG -> Nyström layers -> LayerNorm -> classifier on the class token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from milsdk.errors import ModelConfigError
from milsdk.models.mil_model import MILModel
from milsdk.models.registry import register_model
from milsdk.nn.linear import LazyLinear
from milsdk.nn.attention.nystrom_attention import LANDMARK_SCHEMES
from milsdk.nn.export_mode import exporting
from milsdk.nn.masked import as_bool_mask
from milsdk.nn.ppeg import PPEG, ceil_sqrt, grid_side
from milsdk.nn.transformers.nystrom_transformer import nystrom_layers

__all__ = ["TransMIL"]

_EMBEDDINGS = ("linear_relu", "linear_or_identity")


@register_model
class TransMIL(MILModel):
    r"""TransMIL with a per-bag mask.

    For a bag of :math:`n` instances :math:`h_i = \mathrm{ReLU}(W \,\text{feat\_ext}(x_i) + b)` (Linear + ReLU
    as in the paper's code, also when the feature size equals ``att_dim``):

    1. square the sequence: :math:`s = \lceil\sqrt n\rceil`, tokens :math:`t_k = h_{k \bmod n}` for
       :math:`k < s^2` (the first :math:`s^2 - n` instances are repeated), then prepend a learned class token;
    2. the first Nyström layer, then PPEG over the :math:`s \times s` map (the class token passes through),
       then the other layers (pre-norm, residual), a LayerNorm and a linear classifier on the class token.

    Batches: every per-bag size (:math:`n_b`, :math:`s_b`) is data, not a shape. The batch is laid out on one
    :math:`S \times S` grid, :math:`S = \lceil\sqrt N\rceil` of the padded length N (symbolic under
    ``torch.export`` via :func:`milsdk.nn.ppeg.grid_side`); a bag's tokens are gathered by index, its square
    map occupies the top-left :math:`s_b \times s_b` block, everything else is masked out of attention and
    zero for PPEG. A bag's logits and attention are therefore the same alone or padded in any batch (to float
    rounding). Masks may have holes: real instances are taken in their order.

    Attention (``return_att``): the class token's **exact** softmax attention over the tokens in the last
    layer, :math:`\operatorname{softmax}_j(q_\text{cls} \cdot k_j / \sqrt d)`, averaged over heads
    (:meth:`NystromAttention.exact_attention_row`: one query row, O(N), the :math:`L \times L` matrix is never
    formed), taken from the keys the last layer projects anyway; since only the class token is read after it,
    that layer computes the class token's row alone (:meth:`NystromAttention.forward_row_chunked`). The layer
    itself still mixes tokens through its Nyström approximation; the approximation's class
    row is not used as attention because its pseudo-inverse (a fixed number of iterations, as in the paper)
    does not converge for an ill-conditioned landmark kernel, which a trained model produces, and the row can
    then be all negative. The weight of a repeated (filler) token is added to the instance it copies. The
    result is positive on every real instance, 0 on padding, and sums to the class token's attention mass
    over the instances (< 1: the class token attends to itself too; ``attention_output = "weights"``, the
    deployment wrapper renormalises over the real instances).

    Args:
        in_shape: shape of one instance, e.g. (1024,); None = lazy (inferred at the first forward).
        att_dim: token width.
        n_layers: Nyström layers (>= 2; PPEG follows the first).
        n_heads: attention heads.
        n_landmarks: maximum landmarks per bag (None = att_dim // 2).
        pinv_iterations: pseudo-inverse iterations.
        dropout: dropout inside the layers.
        use_mlp: MLP sub-block in each layer.
        feat_ext: instance feature extractor applied to X (default identity).
        criterion: loss (default BCEWithLogitsLoss for one output, CrossEntropyLoss for n_classes > 1).
        n_classes: number of outputs (1 = binary, logits (B,); C > 1 = logits (B, C)).
        embed: instance embedding, ``"linear_relu"`` (Linear + ReLU, as the paper's code) or
            ``"linear_or_identity"`` (torchmil 1.0.2's: a Linear without activation, none when the feature
            size equals ``att_dim``).
        landmarks: the Nyström layers' landmark scheme, ``"segments"`` or ``"torchmil"`` (see
            :class:`milsdk.nn.attention.NystromAttention`). ``embed="linear_or_identity", landmarks="torchmil"``
            computes what torchmil's TransMIL computes, bag by bag (what :func:`milsdk.models.from_torchmil`
            builds); padding invariance and export are the same with either option.
    """

    attention_output = "weights"
    test_config = {"att_dim": 16, "n_heads": 2, "n_landmarks": 8}
    # MILModel's Python-only properties, skipped by torch.jit.script (they read __dict__).
    __jit_unused_properties__ = ["config", "in_shape", "n_outputs"]

    def __init__(
        self,
        in_shape: Sequence[int] | None = None,
        att_dim: int = 512,
        n_layers: int = 2,
        n_heads: int = 4,
        n_landmarks: int | None = None,
        pinv_iterations: int = 6,
        dropout: float = 0.0,
        use_mlp: bool = False,
        feat_ext: torch.nn.Module | None = None,
        criterion: torch.nn.Module | None = None,
        n_classes: int = 1,
        *,
        embed: str = "linear_relu",
        landmarks: str = "segments",
    ) -> None:
        super().__init__()
        if embed not in _EMBEDDINGS:
            raise ModelConfigError(f"TransMIL: embed={embed!r}, expected one of {_EMBEDDINGS}")
        if landmarks not in LANDMARK_SCHEMES:
            raise ModelConfigError(f"TransMIL: landmarks={landmarks!r}, expected one of {LANDMARK_SCHEMES}")
        if n_layers < 2:
            raise ModelConfigError(f"TransMIL needs n_layers >= 2 (PPEG sits between layers), got {n_layers}")
        if att_dim < 1 or att_dim % n_heads != 0:
            raise ModelConfigError(f"TransMIL: n_heads={n_heads} must divide att_dim={att_dim}")
        n_landmarks = max(att_dim // 2, 1) if n_landmarks is None else n_landmarks
        if n_landmarks < 1:
            raise ModelConfigError(f"TransMIL: n_landmarks must be >= 1, got {n_landmarks}")
        feat_dim = self.setup_head(feat_ext, in_shape, criterion, n_classes)
        self.n_landmarks = n_landmarks
        self.embed = embed
        if embed == "linear_or_identity" and feat_dim == att_dim:
            self.fc1: torch.nn.Module = torch.nn.Identity()
        else:
            self.fc1 = LazyLinear(feat_dim, att_dim)
        self.cls_token = torch.nn.Parameter(torch.randn(1, 1, att_dim))
        self.layers = nystrom_layers(n_layers, att_dim, n_heads, n_landmarks, pinv_iterations, dropout, use_mlp)
        for layer in self.layers:
            # nystrom_layers builds the default scheme; the attribute is all that selects it (no weights).
            layer.att.landmarks = landmarks
        self.pos_layer = PPEG(att_dim)
        self.norm = torch.nn.LayerNorm(att_dim)
        self.classifier = torch.nn.Linear(att_dim, n_classes)
        #: most tokens per chunk of the Nystrom layers' attention (NystromAttention.forward_chunked): a 100,000-
        #: instance bag never holds a whole (tokens x landmarks) kernel
        self.chunk_size = 4096

    def _forward(
        self, X: torch.Tensor, mask: torch.Tensor | None, need_att: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        H = self.fc1(self.feat_ext(X))  # (B, N, E)
        if self.embed == "linear_relu":
            H = torch.relu(H)
        B, N, E = H.shape[0], H.shape[1], H.shape[2]
        device = H.device
        keep = as_bool_mask(mask, H)
        real = keep.to(torch.long)
        n = real.sum(dim=1, keepdim=True)  # (B, 1) real instances per bag
        batch = torch.arange(B, device=device).reshape(B, 1)

        # Stable partition: slot[b, i] = rank of instance i (real ones first, in order); order inverts it.
        slot = torch.where(keep, real.cumsum(dim=1) - 1, n + (1 - real).cumsum(dim=1) - 1)
        positions = torch.arange(N, device=device).reshape(1, N).expand(B, N)
        order = torch.zeros_like(slot).scatter(1, slot, positions)

        # Square each bag: token k < s_b**2 is real instance k mod n_b; S*S >= every s_b**2 tokens.
        S = grid_side(N)
        side = ceil_sqrt(n)  # (B, 1)
        k = torch.arange(S * S, device=device).reshape(1, S * S)
        valid = k < side * side  # (B, S*S)
        source = order.gather(1, torch.remainder(k, n.clamp_min(1)).expand(B, S * S))
        tokens = H[batch, source] * valid.unsqueeze(-1).to(H.dtype)
        seq = torch.cat([self.cls_token.to(H.dtype).expand(B, 1, E), tokens], dim=1)  # (B, 1 + S*S, E)
        seq_mask = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=device), valid], dim=1)

        last = len(self.layers) - 1
        bound = 2 * N + 2  # >= 1 + S * S, S = ceil(sqrt(N)): the chunk count from a size, not from data
        cls_row = seq.new_zeros(0)
        for i, layer in enumerate(self.layers):
            if i == last:
                # only the class token's output is read: the last layer computes that row alone, and its exact
                # attention (B, h, 1 + S*S) from the keys it projects anyway
                seq, cls_row = layer.forward_row_chunked(seq, seq_mask, self.chunk_size, bound, 0, need_att)
            else:
                seq = layer.forward_chunked(seq, seq_mask, self.chunk_size, bound)
            if i == 0:
                # the class token passes through; tokens past each bag's map are masked out of every later
                # layer, so an exported graph's PPEG returns them as zero and frees the sequence before its
                # convolution (eagerly the sequence is held anyway: PPEG keeps them, as it always did)
                seq = self.pos_layer.forward_after(seq, side, 1, keep_outside=not exporting())
        logits = self.squeeze_binary(self.classifier(self.norm(seq[:, 0])))
        if not need_att:
            return logits, logits.new_zeros(0)

        weights = cls_row.mean(dim=1)[:, 1:]  # (B, S*S); padded tokens are 0
        # Slot j (< n_b) is token j plus, when it was repeated, the filler token j + n_b.
        j = torch.arange(N, device=device).reshape(1, N)
        copy = j + n
        has_copy = copy < side * side
        copy = torch.where(has_copy, copy, torch.zeros_like(copy))
        per_slot = weights.gather(1, j.expand(B, N)) + weights.gather(1, copy) * has_copy.to(weights.dtype)
        instance_att = per_slot.gather(1, slot) * keep.to(weights.dtype)
        return logits, instance_att.to(logits.dtype)

    def forward(
        self, X: torch.Tensor, mask: torch.Tensor | None = None, return_att: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Bag logits.

        Args:
            X: (B, N, *in_shape) instance features.
            mask: (B, N) True / 1 = real instance (bool or uint8); None = all real.
            return_att: also return the class token's attention over the instances.

        Returns:
            logits (B,) for one output or (B, C); with ``return_att`` also attention (B, N): non-negative
            weights, 0 on padding, not normalised (see the class docstring).
        """
        logits, att = self._forward(X, mask, return_att)
        if return_att:
            return logits, att
        return logits
