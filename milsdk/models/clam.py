"""CLAM: clustering-constrained attention MIL (Lu et al., Nature BME 2021, "Data-efficient and weakly
supervised computational pathology on whole-slide images"), single-branch (CLAM_SB) and multi-branch
(CLAM_MB).

Instance encoder (``feat_ext``) -> attention pooling (one branch, or one per class) -> bag classifier; during
training an instance-level clustering loss on the most and least attended instances (``InstLoss``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
import torch.nn.functional as F

from milsdk.errors import ModelConfigError
from milsdk.models.mil_model import MILModel
from milsdk.models.registry import register_model
from milsdk.nn.attention import AttentionPool
from milsdk.nn.linear import LazyLinear
from milsdk.nn.masked import as_bool_mask, masked_softmax
from milsdk.nn.mlp import make_activation
from milsdk.nn.smooth_top1_svm import SmoothTop1SVM

__all__ = ["CLAM_MB", "CLAM_SB"]

INST_LOSS_NAMES = ("SmoothTop1SVM", "BCEWithLogitsLoss")

# logits | (logits, attention) | (logits, embeddings) | (logits, attention, embeddings)
_Output = Union[
    torch.Tensor, tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]
]


def _make_inst_loss(name: str) -> torch.nn.Module:
    """Per-instance loss module of a 2-way instance classifier (reduction 'none': the model averages)."""
    if name == "SmoothTop1SVM":
        return SmoothTop1SVM(n_classes=2, reduction="none")
    if name == "BCEWithLogitsLoss":
        return torch.nn.BCEWithLogitsLoss(reduction="none")
    raise ModelConfigError(f"inst_loss_name must be one of {INST_LOSS_NAMES}, got {name!r}")


def _check_k_sample(k_sample: int) -> None:
    if k_sample < 1:
        raise ModelConfigError(f"k_sample must be >= 1, got {k_sample}")


def _per_instance_loss(loss_fn: torch.nn.Module, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Loss of each row of ``logits`` (n, 2) for its class ``target`` (n,) long -> (n,).

    BCEWithLogitsLoss treats the two outputs as independent sigmoids with the one-hot target (the mean of the
    two terms); the reference passed (n, 1) targets for (n, 2) logits and crashed.
    """
    if isinstance(loss_fn, torch.nn.BCEWithLogitsLoss):
        return loss_fn(logits, F.one_hot(target, 2).to(logits.dtype)).mean(dim=-1)
    return loss_fn(logits, target)


def _top_bottom(
    scores: torch.Tensor, keep: torch.Tensor, k_sample: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k most and k least attended real instances of each bag, k = min(k_sample, n_real // 2).

    One stable descending sort ranks the real instances first, so the two sets are disjoint (also under ties)
    and never contain padding.

    Args:
        scores: (B, N) attention scores; keep: (B, N) bool, True = real instance.

    Returns:
        top (B, K) and bottom (B, K) instance indices with K = min(k_sample, N); valid (B, K) bool, True for
        the first k of the bag's K slots; k (B,) long.
    """
    N = scores.shape[1]
    K = min(k_sample, N)
    n_real = keep.sum(dim=1)
    k = torch.clamp(n_real // 2, max=k_sample)
    order = torch.sort(scores.masked_fill(~keep, float("-inf")), dim=1, descending=True, stable=True).indices
    j = torch.arange(K, device=scores.device).unsqueeze(0)
    valid = j < k.unsqueeze(1)
    top = order[:, :K]
    bottom = order.gather(1, (n_real.unsqueeze(1) - 1 - j).clamp_min(0))
    return top, bottom, valid, k


def clam_instance_loss(
    scores: torch.Tensor,
    H: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None,
    classifiers: torch.nn.ModuleList,
    k_sample: int,
    loss_fn: torch.nn.Module,
) -> torch.Tensor:
    r"""CLAM's instance-level clustering loss, averaged over the bags of a batch.

    For bag b with label :math:`y` and, for class c, its k most attended real instances :math:`T_c` and k
    least attended :math:`L_c` (k = min(k_sample, n_real // 2); the attention of branch c for CLAM_MB, the one
    attention for CLAM_SB), the 2-way instance classifier :math:`g_c` is trained with

    .. math::
        \ell_{\text{in}} = \frac{1}{2k}\Big(\sum_{i \in T_y} \ell(g_y(h_i), 1)
            + \sum_{i \in L_y} \ell(g_y(h_i), 0)\Big),
        \qquad
        \ell_{\text{out}} = \frac{1}{C'-1} \sum_{c \ne y} \frac{1}{k} \sum_{i \in T_c} \ell(g_c(h_i), 0),

    and the bag's loss is :math:`\ell_{\text{in}} + \ell_{\text{out}}` (C' classifiers; for C' = 2 this is the
    reference's sum of the two branches). Bags with fewer than 2 real instances (k = 0) take no part; the loss
    is the mean over the others (0 when there are none).

    Args:
        scores: (B, N, S) attention scores, S = 1 (shared by every class) or S = C' (one branch per class).
        H: (B, N, D) instance embeddings.
        labels: (B,) class indices in [0, C').
        mask: (B, N) True / 1 = real instance; None = all real.
        classifiers: C' instance classifiers D -> 2.
        k_sample: the k of top-k / bottom-k.
        loss_fn: per-instance loss (:func:`_make_inst_loss`).

    Returns:
        Scalar loss.
    """
    keep = as_bool_mask(mask, H)
    labels = labels.reshape(-1).long()
    B, D = H.shape[0], H.shape[-1]
    n_branches = len(classifiers)
    loss_in = torch.zeros(B, device=H.device)  # losses in float32, whatever H's dtype
    loss_out = torch.zeros(B, device=H.device)
    k = keep.new_zeros(B, dtype=torch.long)
    for c, classifier in enumerate(classifiers):
        top, bottom, valid, k = _top_bottom(scores[..., min(c, scores.shape[-1] - 1)].float(), keep, k_sample)
        K = top.shape[1]
        weight = valid.float()
        denom = k.clamp_min(1).float()
        is_class = labels == c
        top_logits = classifier(H.gather(1, top.unsqueeze(-1).expand(B, K, D))).float()
        top_target = is_class.long().unsqueeze(1).expand(B, K)
        top_loss = _per_instance_loss(loss_fn, top_logits.reshape(B * K, 2), top_target.reshape(-1))
        top_sum = (top_loss.reshape(B, K) * weight).sum(dim=1)
        bottom_logits = classifier(H.gather(1, bottom.unsqueeze(-1).expand(B, K, D))).float()
        bottom_target = torch.zeros(B * K, dtype=torch.long, device=H.device)
        bottom_loss = _per_instance_loss(loss_fn, bottom_logits.reshape(B * K, 2), bottom_target)
        bottom_sum = (bottom_loss.reshape(B, K) * weight).sum(dim=1)
        loss_in = loss_in + torch.where(is_class, (top_sum + bottom_sum) / (2 * denom), 0.0)
        loss_out = loss_out + torch.where(is_class, 0.0, top_sum / denom)
    per_bag = loss_in + loss_out / (n_branches - 1)
    took_part = (k > 0).to(per_bag.dtype)
    return (per_bag * took_part).sum() / took_part.sum().clamp_min(1.0)


def _materialise_on_first_call(model: torch.nn.Module, trigger: torch.nn.Module) -> None:
    """For a lazy model, initialise the instance classifiers (used only by compute_loss) the first time
    ``trigger`` sees the (..., D) embeddings, so that a model that has only run forward has no uninitialised
    parameters (checkpoints, exports)."""

    def hook(module: torch.nn.Module, args: tuple) -> None:
        handle.remove()
        with torch.no_grad():
            probe = args[0].reshape(-1, args[0].shape[-1])[:1]
            for classifier in model.inst_classifiers:
                classifier(probe)

    handle = trigger.register_forward_pre_hook(hook)


class _CLAM(MILModel):
    """What CLAM_SB and CLAM_MB share: the constructor (the instance classifiers and their loss), forward's
    outputs and ``compute_loss``.

    A subclass implements ``_setup_bag_head(feat_dim, att_dim, att_act, gated, n_branches)``, which builds
    its attention and bag classifier and returns the classifier (its first call sees the (..., D) embeddings,
    which initialise a lazy model's instance classifiers), ``_pool(H, mask)`` -> (logits, attention (B, N))
    and ``_instance_scores(H, attention)`` -> the (B, N, S) scores that choose the instance loss's instances.
    TorchScript compiles the inherited ``forward`` against the subclass's ``_pool``.
    """

    def __init__(
        self,
        in_shape: Sequence[int] | None = None,
        att_dim: int = 128,
        att_act: str = "tanh",
        k_sample: int = 10,
        gated: bool = False,
        inst_loss_name: str = "SmoothTop1SVM",
        feat_ext: torch.nn.Module | None = None,
        criterion: torch.nn.Module | None = None,
        n_classes: int = 1,
    ) -> None:
        super().__init__()
        _check_k_sample(k_sample)
        feat_dim = self.setup_head(feat_ext, in_shape, criterion, n_classes)
        self.k_sample = k_sample
        n_branches = 2 if n_classes == 1 else n_classes
        # built before the instance classifiers: the order in which a seeded model draws its initial weights
        bag_classifier = self._setup_bag_head(feat_dim, att_dim, att_act, gated, n_branches)
        self.inst_classifiers = torch.nn.ModuleList([LazyLinear(feat_dim, 2) for _ in range(n_branches)])
        self.inst_loss_fn = _make_inst_loss(inst_loss_name)
        if feat_dim is None:
            _materialise_on_first_call(self, bag_classifier)

    def forward(
        self,
        X: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_att: bool = False,
        return_emb: bool = False,
    ) -> _Output:
        """Bag logits.

        Args:
            X: (B, N, *in_shape) instance features.
            mask: (B, N) True / 1 = real instance; None = all real.
            return_att: also return the attention (B, N): CLAM_SB's attention logits f before the masked
                softmax, CLAM_MB's mean of the branch distributions.
            return_emb: also return the instance embeddings feat_ext(X) (B, N, D).

        Returns:
            logits (B,) for one output or (B, C); then the attention if ``return_att``, then the embeddings if
            ``return_emb`` (the reference's order).
        """
        H = self.feat_ext(X)
        logits, att = self._pool(H, mask)
        if return_emb:
            if return_att:
                return logits, att, H
            return logits, H
        if return_att:
            return logits, att
        return logits

    def compute_loss(
        self, Y: torch.Tensor, X: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward pass, bag loss and instance loss.

        Args:
            Y: (B,) bag labels (0 / 1 for one output, class indices otherwise).
            X: (B, N, *in_shape); mask: (B, N).

        Returns:
            logits (B,) or (B, C); {criterion name: bag loss, 'InstLoss': instance loss}.
        """
        logits, att, H = self(X, mask, return_att=True, return_emb=True)
        losses = self.bag_loss(logits, Y)
        losses["InstLoss"] = clam_instance_loss(
            self._instance_scores(H, att), H, Y, mask, self.inst_classifiers, self.k_sample, self.inst_loss_fn
        )
        return logits, losses


@register_model
class CLAM_SB(_CLAM):
    r"""CLAM, single attention branch.

    Forward as ABMIL: :math:`f_i = w^\top \operatorname{act}(V h_i)` (gated optionally),
    :math:`z = \sum_i \operatorname{softmax}_{i \in \text{real}}(f)_i\, h_i`, logits :math:`W z + b`.
    Training adds ``InstLoss`` (:func:`clam_instance_loss`): one 2-way instance classifier per class (two,
    {negative, positive}, for ``n_classes=1``); the k most attended real instances are positives and the k
    least attended negatives for the true class's classifier, and the k most attended are negatives for every
    other class's classifier. The out-of-class term is used for binary tasks too, as in the reference (CLAM's
    own code drops it when its ``subtyping`` flag is off; the reference's constructor has no such flag).

    Deviations from the reference, all deliberate: the mask reaches the instance loss (only real instances are
    selected, k = min(k_sample, n_real // 2) so the top and bottom sets never overlap; a bag of < 2 real
    instances has no instance loss); ``InstLoss`` is the mean over bags, not the sum (it no longer grows with
    the batch size); ``inst_loss_name='BCEWithLogitsLoss'`` works (one-hot targets over the 2 outputs); the
    SmoothTop1SVM targets are class indices (n,) (the reference passes (n, 1) targets, which its loss
    broadcasts to (n, n, 2): one instance scored (2, 0) for class 0 gets -1 instead of log(1 + e^-1)).
    Deterministic in eval mode (no sampling; top-k is used only in training). ``return_att`` gives the
    attention logits before the masked softmax (``attention_output = "logits"``, as ABMIL).

    Args:
        in_shape: shape of one instance, e.g. (1024,); None = lazy (inferred at the first forward).
        att_dim: attention hidden size.
        att_act: 'tanh', 'relu' or 'gelu'.
        k_sample: k of the top-k / bottom-k instances of the instance loss (>= 1).
        gated: gated attention.
        inst_loss_name: 'SmoothTop1SVM' or 'BCEWithLogitsLoss'.
        feat_ext: instance feature extractor applied to X (default identity).
        criterion: bag loss (default BCEWithLogitsLoss for one output, CrossEntropyLoss for n_classes > 1).
        n_classes: number of outputs (1 = binary, logits (B,); C > 1 = logits (B, C)).
    """

    test_config = {"att_dim": 8, "k_sample": 2}

    def _setup_bag_head(
        self, feat_dim: int | None, att_dim: int, att_act: str, gated: bool, n_branches: int
    ) -> torch.nn.Module:
        """One attention branch and a C-output classifier; returns the classifier."""
        self.pool = AttentionPool(in_dim=feat_dim, att_dim=att_dim, act=att_act, gated=gated)
        self.classifier = LazyLinear(feat_dim, self.n_classes)
        return self.classifier

    def _pool(self, H: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """H (B, N, D) -> logits (B,) or (B, C), attention logits f (B, N)."""
        z, f = self.pool.pool_with_logits(H, mask)
        return self.squeeze_binary(self.classifier(z)), f

    def _instance_scores(self, H: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """The one attention branch chooses the instances of every class: f (B, N) -> (B, N, 1)."""
        return att.unsqueeze(-1)


class _MultiBranchAttention(torch.nn.Module):
    r"""Attention scores of C branches over shared hidden units,
    :math:`f_{ic} = w_c^\top \big(\operatorname{act}(V h_i) \odot \sigma(U h_i)\big)` (the gate only when
    ``gated``).

    Args:
        in_dim: instance size D (None = inferred at the first call).
        att_dim: hidden size.
        act: 'tanh', 'relu' or 'gelu'.
        gated: multiply by a sigmoid gate.
        n_branches: number of branches C.

    Shapes:
        H (B, N, D) -> f (B, N, C).
    """

    def __init__(self, in_dim: int | None, att_dim: int, act: str, gated: bool, n_branches: int) -> None:
        super().__init__()
        if act not in ("tanh", "relu", "gelu"):
            raise ModelConfigError(f"att_act must be 'tanh', 'relu' or 'gelu', got {act!r}")
        self.fc1 = LazyLinear(in_dim, att_dim)
        self.act = make_activation(act)
        self.fc_gated = LazyLinear(in_dim, att_dim) if gated else None
        self.fc2 = torch.nn.Linear(att_dim, n_branches, bias=False)

    def forward(self, H: torch.Tensor) -> torch.Tensor:
        """H (B, N, D) -> f (B, N, C)."""
        A = self.act(self.fc1(H))
        if self.fc_gated is not None:
            A = A * torch.sigmoid(self.fc_gated(H))
        return self.fc2(A)


@register_model
class CLAM_MB(_CLAM):
    r"""CLAM, one attention branch and one bag classifier per class (the paper's multi-branch variant; not in
    the reference library).

    .. math::
        f_{ic} = w_c^\top \operatorname{act}(V h_i), \quad
        a_{\cdot c} = \operatorname{softmax}_{i \in \text{real}}(f_{\cdot c}), \quad
        z_c = \sum_i a_{ic} h_i, \quad \text{logit}_c = u_c^\top z_c + b_c

    The C bag classifiers :math:`(u_c, b_c)` are stored as one C-output linear layer whose row c is applied to
    :math:`z_c` only. ``InstLoss`` is :func:`clam_instance_loss` with class c's instances chosen by branch c's
    attention (as in CLAM).

    Exported attention (``return_att``): the mean over branches of each branch's distribution,
    :math:`\frac1C \sum_c a_{ic}`: a distribution over the real instances, 0 on padding, padding-invariant and
    independent of the predicted class (the predicted class's branch alone would make the map switch with the
    argmax); ``attention_output = "weights"``. Deterministic in eval mode.

    Args:
        in_shape, att_dim, att_act, k_sample, gated, inst_loss_name, feat_ext: as in :class:`CLAM_SB`.
        criterion: bag loss (default BCEWithLogitsLoss for one output, CrossEntropyLoss for n_classes > 1).
        n_classes: 1 = binary (two branches, {negative, positive}, as CLAM's binary models; the single logit
            is the positive branch's logit minus the negative one's, so its sigmoid is the two-class softmax's
            positive probability), or C >= 2 classes (logits (B, C)).
    """

    attention_output = "weights"
    test_config = {"att_dim": 8, "k_sample": 2}
    test_n_classes = (1, 3)

    def _setup_bag_head(
        self, feat_dim: int | None, att_dim: int, att_act: str, gated: bool, n_branches: int
    ) -> torch.nn.Module:
        """One attention branch per class and their C bag classifiers (one linear layer); returns it."""
        self.attention = _MultiBranchAttention(feat_dim, att_dim, att_act, gated, n_branches)
        self.classifiers = LazyLinear(feat_dim, n_branches)
        return self.classifiers

    def _pool(self, H: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """H (B, N, D) -> logits (B,) or (B, C), the mean of the branch distributions (B, N)."""
        a = masked_softmax(self.attention(H), mask)  # (B, N, C): one distribution per branch
        Z = torch.bmm(a.transpose(1, 2), H)  # (B, C, D): z_c per branch
        logits = torch.diagonal(self.classifiers(Z), dim1=1, dim2=2)  # logit_c = u_c . z_c + b_c
        if self.n_classes == 1:
            logits = logits[:, 1] - logits[:, 0]
        return logits, a.mean(dim=-1)

    def _instance_scores(self, H: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """Class c's instances are chosen by branch c's scores: H (B, N, D) -> (B, N, C)."""
        with torch.no_grad():  # the scores only choose instances (sorting has no gradient)
            return self.attention(H)
