"""IIB-MIL: integrated instance-level and bag-level MIL with label disambiguation (Ren et al., MICCAI 2023,
"IIB-MIL: Integrated Instance-Level and Bag-Level Multiple Instances Learning with Label Disambiguation for
Pathological Image Analysis")."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from milsdk.errors import ModelConfigError
from milsdk.models.mil_model import MILModel
from milsdk.models.registry import register_model
from milsdk.nn.masked import as_bool_mask
from milsdk.nn.transformers import TransformerEncoder

__all__ = ["IIBMIL"]


@register_model
class IIBMIL(MILModel):
    r"""IIB-MIL: a transformer encoder, an instance classifier trained on prototype pseudo-labels, and a
    transformer decoder that aggregates the instances into a class token for the bag classifier.

    .. math::
        H = \operatorname{Enc}(\text{feat\_ext}(X), \text{mask}) \in \mathbb{R}^{N \times d},\qquad
        p_i = w_\text{inst}^\top h_i + b,\qquad
        c = \operatorname{Dec}([t_\text{cls}; H])_0,\qquad \hat y = W c + b

    Instance branch: prototypes :math:`P` (a buffer, one row per pseudo-class) give pseudo-labels
    :math:`\arg\max_c P_c^\top h_i` (similarity to the prototypes, on detached embeddings); the instance loss
    ``InstLoss`` is the criterion between the instance logits and these labels, over the real instances only.
    :meth:`update_prototypes` (call it yourself, e.g. once per epoch; the reference does not call it either)
    moves each prototype towards the mean of the instances the instance classifier scores highest for it.

    Binary (``n_classes=1``): two prototypes as in the reference, row 0 from the 10% highest-scoring instances
    (positive), row 1 from the 10% lowest (negative). The reference then uses the argmax index as the target,
    i.e. label 0 for instances near the *positive* prototype; here an instance's target is 1 exactly when it is
    closer to the positive prototype (ties, e.g. the zero prototypes before any update, are negative, as the
    reference's initial targets). With ``n_classes = C > 1`` there are C prototypes, the instance classifier
    has C outputs and the targets are the argmax (CrossEntropy).

    Bag branch: the decoder is a transformer encoder over [class token; H] (reference layout). Only the class
    token's output is used, so the last decoder layer is computed for the class token alone (same result,
    O(N) instead of O(N^2) time); all attention is exact and chunked (memory linear in N, also in ONNX).

    Attention (``return_att``): the last decoder layer's attention of the class token over the instances,
    averaged over heads (non-negative, 0 on padding; ``attention_output = "weights"``, renormalised over the
    real instances by the deployment wrapper). The reference's extra outputs (instance logits, embeddings) come
    from :meth:`forward_all`; forward keeps the one contract signature.

    Args:
        in_shape: shape of one instance, e.g. (1024,). Required: the encoder's first layer is sized by it (the
            reference's default None crashes; here it raises a clear error).
        att_dim: width of the encoder, decoder and prototypes.
        n_layers_encoder: encoder layers.
        n_layers_decoder: decoder layers.
        use_mlp_encoder: MLP sub-block in the encoder layers.
        use_mlp_decoder: MLP sub-block in the decoder layers.
        n_heads: attention heads (must divide ``att_dim``).
        feat_ext: instance feature extractor applied to X (default identity).
        criterion: loss for both the bag and the instance logits (default BCEWithLogitsLoss for one output,
            CrossEntropyLoss for n_classes > 1).
        n_classes: number of outputs (1 = binary, logits (B,); C > 1 = logits (B, C)).
    """

    attention_output = "weights"
    test_config = {"att_dim": 16, "n_heads": 2}
    __jit_unused_properties__ = ["config", "in_shape", "n_outputs"]

    def __init__(
        self,
        in_shape: Sequence[int] | None = None,
        att_dim: int = 256,
        n_layers_encoder: int = 1,
        n_layers_decoder: int = 1,
        use_mlp_encoder: bool = True,
        use_mlp_decoder: bool = False,
        n_heads: int = 4,
        feat_ext: torch.nn.Module | None = None,
        criterion: torch.nn.Module | None = None,
        n_classes: int = 1,
    ) -> None:
        super().__init__()
        if in_shape is None:
            raise ModelConfigError(
                "IIBMIL needs in_shape (e.g. (1024,)): its transformer encoder is sized by the feature size"
            )
        if att_dim < 1 or att_dim % n_heads != 0:
            raise ModelConfigError(f"IIBMIL: n_heads={n_heads} must divide att_dim={att_dim}")
        feat_dim = self.setup_head(feat_ext, in_shape, criterion, n_classes)
        self.register_buffer("prototypes", torch.zeros(max(2, n_classes), att_dim))
        self.encoder = TransformerEncoder(
            in_dim=feat_dim,
            out_dim=att_dim,
            att_dim=att_dim,
            n_heads=n_heads,
            n_layers=n_layers_encoder,
            use_mlp=use_mlp_encoder,
        )
        self.decoder = TransformerEncoder(
            in_dim=att_dim,
            out_dim=att_dim,
            att_dim=att_dim,
            n_heads=n_heads,
            n_layers=n_layers_decoder,
            use_mlp=use_mlp_decoder,
            add_self=False,
        )
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, att_dim))
        self.inst_classifier = torch.nn.Linear(att_dim, n_classes)
        self.bag_classifier = torch.nn.Linear(att_dim, n_classes)

    def forward_all(
        self, X: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Everything the model computes (the reference's ``forward(..., return_inst_pred=True,
        return_X_enc=True)`` plus the attention).

        Args:
            X: (B, N, *in_shape); mask: (B, N) True / 1 = real instance; None = all real.

        Returns:
            logits (B,) or (B, C); attention (B, N) (see the class docstring); instance logits (B, N) or
            (B, N, C); instance embeddings X_enc (B, N, att_dim).
        """
        keep = as_bool_mask(mask, X)
        X_enc = self.encoder(self.feat_ext(X), keep)
        assert isinstance(X_enc, torch.Tensor)  # TorchScript refinement of forward's union return type
        y_inst = self.squeeze_binary(self.inst_classifier(X_enc))
        B = X_enc.shape[0]
        cls = self.cls_token.to(X_enc.dtype).expand(B, 1, X_enc.shape[2])
        Z = torch.cat([cls, X_enc], dim=1)
        Z_mask = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=keep.device), keep], dim=1)
        z, weights = self.decoder.forward_first(Z, Z_mask, 1)  # (B, 1, att_dim), (B, H, 1, 1 + N)
        logits = self.squeeze_binary(self.bag_classifier(z[:, 0]))
        att = weights[:, :, 0, 1:].mean(dim=1).to(logits.dtype)
        return logits, att, y_inst, X_enc

    def forward(
        self, X: torch.Tensor, mask: torch.Tensor | None = None, return_att: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Bag logits.

        Args:
            X: (B, N, *in_shape) instance features.
            mask: (B, N) True / 1 = real instance (bool or uint8); None = all real.
            return_att: also return the class token's attention over the instances.

        Returns:
            logits (B,) for one output or (B, C); with ``return_att`` also attention (B, N): non-negative,
            0 on padding, not normalised (the class token also attends to itself).
        """
        logits, att, _, _ = self.forward_all(X, mask)
        if return_att:
            return logits, att
        return logits

    def _pseudo_labels(self, X_enc: torch.Tensor) -> torch.Tensor:
        """Prototype pseudo-labels of embeddings (M, att_dim): float 0/1 (binary) or long class indices."""
        sim = X_enc.detach().float() @ self.prototypes.t().float()
        if self.n_classes == 1:
            return (sim[:, 0] > sim[:, 1]).float()
        return sim.argmax(dim=1)

    def compute_loss(
        self, Y: torch.Tensor, X: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Bag loss and instance loss.

        Args:
            Y: (B,) bag labels; X: (B, N, *in_shape); mask: (B, N).

        Returns:
            logits (B,) or (B, C); {criterion name: bag loss, "InstLoss": instance loss over the real
            instances (0 when there are none)}.
        """
        logits, _, y_inst, X_enc = self.forward_all(X, mask)
        losses = self.bag_loss(logits, Y)
        keep = as_bool_mask(mask, X)
        if bool(keep.any()):
            real_logits = y_inst[keep]
            losses["InstLoss"] = self.criterion(
                real_logits,
                self._pseudo_labels(X_enc[keep]).to(real_logits.dtype if self.n_classes == 1 else torch.long),
            )
        else:
            losses["InstLoss"] = y_inst.sum() * 0.0
        return logits, losses

    @torch.no_grad()
    def update_prototypes(
        self, X: torch.Tensor, mask: torch.Tensor | None = None, proto_m: float = 0.9
    ) -> None:
        """Momentum update of the prototypes from the real instances of a batch.

        For each prototype, the k = M // 10 real instances (M over the whole batch) with the highest
        instance score for it (binary: row 0 the highest logits, row 1 the lowest) are folded in one at a time,
        highest first, :math:`p \\leftarrow m\\, p + (1 - m)\\, h` (computed in closed form). Nothing changes
        when k = 0.

        Args:
            X: (B, N, *in_shape); mask: (B, N) True / 1 = real instance; None = all real.
            proto_m: momentum m.
        """
        _, _, y_inst, X_enc = self.forward_all(X, mask)
        keep = as_bool_mask(mask, X)
        emb = X_enc[keep].float()  # (M, att_dim)
        scores = y_inst[keep].float()
        k = emb.shape[0] // 10
        if k == 0:
            return
        if self.n_classes == 1:
            columns = torch.stack([scores, -scores], dim=1)  # row 1 takes the lowest logits
        else:
            columns = scores
        # folding h_0 .. h_{k-1} in order: p_k = m^k p_0 + (1 - m) sum_i m^(k-1-i) h_i
        decay = proto_m ** torch.arange(k - 1, -1, -1, dtype=emb.dtype, device=emb.device)
        for c in range(columns.shape[1]):
            top = columns[:, c].topk(k, largest=True, sorted=True).indices
            update = (1 - proto_m) * (decay[:, None] * emb[top]).sum(dim=0)
            self.prototypes[c] = (proto_m**k) * self.prototypes[c].float() + update
