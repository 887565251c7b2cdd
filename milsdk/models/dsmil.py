"""DSMIL: dual-stream MIL (Li, Li, Eliceiri, CVPR 2021, "Dual-stream Multiple Instance Learning Network for
Whole Slide Image Classification with Self-supervised Contrastive Learning").

Instance encoder (``feat_ext``) -> max-pooling stream (instance classifier, critical instance per class)
and attention stream (similarity to the critical instance) -> bag classifier over the per-class embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from milsdk.errors import ModelConfigError
from milsdk.models.mil_model import MILModel
from milsdk.models.registry import register_model
from milsdk.nn.linear import LazyLinear
from milsdk.nn.masked import as_bool_mask, masked_max, masked_softmax

__all__ = ["DSMIL"]


@register_model
class DSMIL(MILModel):
    r"""Dual-stream MIL with masked, padding-invariant streams.

    With :math:`h_i = \text{feat\_ext}(x_i)` and :math:`c` classes (one for binary):

    1. max-pooling stream: instance logits :math:`y_i = W_0 h_i + b_0 \in \mathbb R^c`; per class the critical
       instance :math:`m_c = \arg\max_{i \in \text{real}} y_{ic}`;
    2. attention stream: :math:`q_i = W_q h_i`, :math:`v_i = W_v h_i` (identity, or Dropout-Linear-ReLU with
       ``nonlinear_v``),

       .. math:: A_{ic} = \operatorname{softmax}_{i \in \text{real}}
                 \frac{\langle q_i, q_{m_c}\rangle}{\sqrt{d_q}}, \qquad b_c = \sum_i A_{ic}\, v_i ;

    3. bag classifier: the paper's ``Conv1d(c, c, kernel_size=D)`` over the class embeddings
       :math:`[b_1, \dots, b_c]`, written as the equivalent Linear on their concatenation (for one class it is
       the reference's ``Linear(D, 1)``): :math:`\hat Y^{\text{bag}} = W_b\, \mathrm{vec}(b) + \beta`.

    Logits: ``forward`` returns what the reference's ``predict`` (and ``compute_loss``) return, the mean of
    the two streams :math:`\tfrac12(\hat Y^{\text{bag}} + \max_{i \in \text{real}} y_i)`, so a served model
    gives the prediction the paper evaluates. The reference's ``forward`` returns the bag stream alone.
    ``compute_loss`` applies the criterion to each stream separately (keys ``{crit}`` for the bag stream,
    ``{crit}_max`` for the max-instance logit), as the reference does.

    Attention (``return_att``): :math:`A` reduced to (B, N) by the mean over classes, a distribution over the
    real instances (0 on padding; ``attention_output = "weights"``). Padded instances never become critical
    and the max is taken over real instances only (the reference takes both over padding too). A bag without
    real instances gives finite logits (the max stream contributes 0).

    Args:
        in_shape: shape of one instance, e.g. (2048,); None = lazy (inferred at the first forward; not with
            ``nonlinear_v``, whose Linear maps D to D).
        att_dim: query size :math:`d_q`.
        nonlinear_q: queries through Linear-ReLU-Linear-Tanh instead of one Linear.
        nonlinear_v: values through Dropout-Linear-ReLU instead of the identity.
        dropout: dropout on the values (before the Linear with ``nonlinear_v``).
        feat_ext: instance feature extractor applied to X (default identity).
        criterion: loss (default BCEWithLogitsLoss for one output, CrossEntropyLoss for n_classes > 1).
        n_classes: number of outputs (1 = binary, logits (B,); C > 1 = logits (B, C)).
    """

    attention_output = "weights"
    test_config = {"att_dim": 8}

    def __init__(
        self,
        in_shape: Sequence[int] | None = None,
        att_dim: int = 128,
        nonlinear_q: bool = False,
        nonlinear_v: bool = False,
        dropout: float = 0.0,
        feat_ext: torch.nn.Module | None = None,
        criterion: torch.nn.Module | None = None,
        n_classes: int = 1,
    ) -> None:
        super().__init__()
        if att_dim < 1:
            raise ModelConfigError(f"DSMIL: att_dim must be >= 1, got {att_dim}")
        feat_dim = self.setup_head(feat_ext, in_shape, criterion, n_classes)
        if nonlinear_v and feat_dim is None:
            raise ModelConfigError(
                "DSMIL(nonlinear_v=True) needs in_shape: its value Linear maps the feature size D to D, "
                "which a lazy model does not know yet"
            )
        self.scale = 1.0 / math.sqrt(att_dim)
        if nonlinear_q:
            self.q_nn = torch.nn.Sequential(
                LazyLinear(feat_dim, att_dim),
                torch.nn.ReLU(),
                torch.nn.Linear(att_dim, att_dim),
                torch.nn.Tanh(),
            )
        else:
            self.q_nn = LazyLinear(feat_dim, att_dim)
        if nonlinear_v:
            self.v_nn = torch.nn.Sequential(
                torch.nn.Dropout(dropout), torch.nn.Linear(feat_dim, feat_dim), torch.nn.ReLU()
            )
        else:
            self.v_nn = torch.nn.Dropout(dropout)
        self.inst_classifier = LazyLinear(feat_dim, n_classes)
        self.bag_classifier = LazyLinear(None if feat_dim is None else n_classes * feat_dim, n_classes)

    def _streams(
        self, X: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """bag-stream logits (B, C), max-instance logits (B, C), A (B, N, C), instance logits (B, N, C)."""
        H = self.feat_ext(X)  # (B, N, D)
        keep = as_bool_mask(mask, H)
        inst_logits = self.inst_classifier(H)  # (B, N, C)
        max_logits = masked_max(inst_logits, keep)  # (B, C)
        # Padded instances get the float32 minimum, so the argmax never picks one.
        critical = inst_logits.masked_fill(~keep.unsqueeze(-1), -3.4028234663852886e38).argmax(dim=1)

        Q = self.q_nn(H)  # (B, N, d_q)
        V = self.v_nn(H)  # (B, N, D)
        Q_crit = Q.gather(1, critical.unsqueeze(-1).expand(-1, -1, Q.shape[-1]))  # (B, C, d_q)
        A = masked_softmax(torch.bmm(Q, Q_crit.transpose(1, 2)) * self.scale, keep)  # (B, N, C)
        bag_emb = torch.bmm(A.transpose(1, 2), V)  # (B, C, D)
        bag_logits = self.bag_classifier(bag_emb.flatten(1))  # (B, C)
        return bag_logits, max_logits, A, inst_logits

    def forward(
        self,
        X: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_att: bool = False,
        return_inst_pred: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Bag logits: the mean of the bag stream and the max-instance stream.

        Args:
            X: (B, N, *in_shape) instance features.
            mask: (B, N) True / 1 = real instance (bool or uint8); None = all real.
            return_att: also return the attention (B, N): A averaged over classes, sums to 1 over the real
                instances, 0 on padding.
            return_inst_pred: also return the instance logits, (B, N) for one output, (B, N, C) for C > 1.
                Not together with ``return_att`` (one extra output at a time keeps forward scriptable).

        Returns:
            logits (B,) for one output or (B, C); with one of the flags also the tensor it asks for.

        Raises:
            ValueError: both ``return_att`` and ``return_inst_pred``.
        """
        if return_att and return_inst_pred:
            raise ValueError(
                "DSMIL.forward: return_att and return_inst_pred cannot both be set; call it once for each"
            )
        bag_logits, max_logits, A, inst_logits = self._streams(X, mask)
        logits = self.squeeze_binary(0.5 * (bag_logits + max_logits))
        if return_att:
            return logits, A.mean(dim=-1)
        if return_inst_pred:
            return logits, self._instance_output(inst_logits)
        return logits

    def _instance_output(self, inst_logits: torch.Tensor) -> torch.Tensor:
        if self.n_classes == 1:
            return inst_logits.squeeze(-1)
        return inst_logits

    def compute_loss(
        self, Y: torch.Tensor, X: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward pass and the two stream losses.

        Args:
            Y: (B,) bag labels.
            X: (B, N, *in_shape); mask: (B, N).

        Returns:
            logits (B,) or (B, C) (as ``forward``); losses ``{crit: criterion(bag stream, Y),
            crit + "_max": criterion(max-instance logit, Y)}``.
        """
        logits, inst = self(X, mask, return_inst_pred=True)
        inst = inst.unsqueeze(-1) if self.n_classes == 1 else inst
        max_logits = self.squeeze_binary(masked_max(inst, as_bool_mask(mask, inst)))
        # forward returns the mean of the two streams; the bag stream is recovered from it exactly enough
        # for its gradient (which is exact) and going through forward keeps its hooks (lazy in_shape).
        bag_logits = 2.0 * logits - max_logits
        name = self.criterion.__class__.__name__
        return logits, {
            name: self.bag_loss(bag_logits, Y)[name],
            f"{name}_max": self.bag_loss(max_logits, Y)[name],
        }

    @torch.no_grad()
    def predict(
        self, X: torch.Tensor, mask: torch.Tensor | None = None, return_inst_pred: bool = True
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Bag logits and, with ``return_inst_pred``, the instance logits (as the reference's ``predict``).

        Args:
            X: (B, N, *in_shape); mask: (B, N).

        Returns:
            logits (B,) or (B, C); with ``return_inst_pred`` also instance logits (B, N), or (B, N, C).
        """
        if return_inst_pred:
            return self(X, mask, return_inst_pred=True)
        return self(X, mask)
