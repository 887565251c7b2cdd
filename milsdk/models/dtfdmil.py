"""DTFD-MIL: double-tier feature distillation MIL (Zhang et al., CVPR 2022, "DTFD-MIL: Double-Tier Feature
Distillation Multiple Instance Learning for Histopathology Whole Slide Image Classification").

Instance encoder (``feat_ext``) -> split into pseudo-bags -> tier 1 (attention pooling + classifier per
pseudo-bag) -> one distilled feature set per pseudo-bag -> tier 2 (attention pooling + classifier) -> logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from milsdk.errors import ModelConfigError
from milsdk.models.mil_model import MILModel
from milsdk.models.registry import register_model
from milsdk.nn.attention import AttentionPool
from milsdk.nn.linear import LazyLinear, linear_in_weight_dtype
from milsdk.nn.masked import as_bool_mask, masked_softmax

__all__ = ["DTFDMIL", "pseudo_bag_groups"]

DISTILL_MODES = ("maxmin", "max", "afs")
PSEUDO_BAG_SPLITS = ("proportional", "array_split")
DISTILL_INSTANCES = ("one", "all")


def pseudo_bag_groups(
    keep: torch.Tensor, n_groups: int, shuffle: bool, split: str = "proportional"
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Assign every real instance of each bag to one of its pseudo-bags.

    A bag with :math:`n` real instances gets :math:`G = \min(\text{n\_groups}, n)` pseudo-bags, each a run of
    consecutive ranks (a real instance's rank is its position among the bag's real instances, or a uniformly
    random rank with ``shuffle``); ``split`` sets the runs' lengths, which differ by at most one:

    - ``"proportional"``: rank :math:`r` goes to pseudo-bag :math:`\lfloor r G / n \rfloor`;
    - ``"array_split"``: ``numpy.array_split``'s sizes (torchmil's): with :math:`q = \lfloor n / G \rfloor`,
      the first :math:`n \bmod G` pseudo-bags get :math:`q + 1` ranks, the others :math:`q`.

    Without ``shuffle`` the split depends only on the bag's real instances in their order (padding-invariant
    and deterministic); with it the ranks come from ``torch.rand`` (reproducible under ``torch.manual_seed``).
    Sizes are tensors (per-bag counts), so the split exports with a dynamic bag size.

    Args:
        keep: (B, N) bool, True = real instance.
        n_groups: maximum number of pseudo-bags per bag.
        shuffle: random ranks instead of the instances' order.
        split: ``"proportional"`` or ``"array_split"``.

    Returns:
        member: (B, n_groups, N) bool, instance i is in pseudo-bag g; group_valid: (B, n_groups) bool,
        pseudo-bag g exists (g < G).
    """
    real = keep.to(torch.long)
    n_real = real.sum(dim=1, keepdim=True)  # (B, 1)
    if shuffle:
        # Padded instances get key 2 > every rand key, so the real ones take the ranks 0 .. n - 1.
        keys = torch.rand(keep.shape, device=keep.device).masked_fill(~keep, 2.0)
        rank = keys.argsort(dim=1).argsort(dim=1)
    else:
        rank = real.cumsum(dim=1) - 1
    groups_per_bag = n_real.clamp_max(n_groups)  # (B, 1)
    if split == "array_split":
        # G <= n, so q >= 1 for every non-empty bag; the clamps only keep an empty bag's divisions defined.
        q = torch.div(n_real, groups_per_bag.clamp_min(1), rounding_mode="floor")  # (B, 1)
        larger = n_real - q * groups_per_bag  # (B, 1) pseudo-bags of q + 1 ranks
        boundary = larger * (q + 1)  # (B, 1) first rank of the pseudo-bags of q ranks
        group = torch.where(
            rank < boundary,
            torch.div(rank, q + 1, rounding_mode="floor"),
            larger + torch.div(rank - boundary, q.clamp_min(1), rounding_mode="floor"),
        )  # (B, N)
    else:
        group = torch.div(rank * groups_per_bag, n_real.clamp_min(1), rounding_mode="floor")  # (B, N)
    g = torch.arange(n_groups, device=keep.device).reshape(1, n_groups, 1)
    member = (group.unsqueeze(1) == g) & keep.unsqueeze(1)
    group_valid = g.squeeze(-1) < groups_per_bag
    return member, group_valid


@register_model
class DTFDMIL(MILModel):
    r"""DTFD-MIL with per-bag pseudo-bags, masked and exportable.

    With :math:`h_i = \text{feat\_ext}(x_i)`, each bag is split into pseudo-bags :math:`P_1, \dots, P_G`
    (:func:`pseudo_bag_groups`, :math:`G = \min(\text{n\_groups}, n)` for :math:`n` real instances).

    Tier 1 (one attention pool and classifier shared by the pseudo-bags):

    .. math:: a_i = \operatorname{softmax}_{i \in P_g} f(h_i), \quad z_g = \sum_{i \in P_g} a_i h_i, \quad
              \hat Y_g = W_1 z_g + b_1, \qquad s_i = W_1 h_i \ \text{(instance CAM)} .

    Distillation, one feature set per pseudo-bag: ``'maxmin'`` the instances of highest and lowest score in
    :math:`P_g`, ``'max'`` the highest, ``'afs'`` :math:`z_g`. The score is the CAM of the pseudo-bag's
    class (:math:`s_i` for one output; the column :math:`\arg\max_c \hat Y_{gc}` for C > 1), the reference's
    CAM (the paper's Grad-CAM scales it by :math:`a_i`). One instance each, as in the paper's code
    (``distill_instances="one"``). Tier 2 pools the distilled features of the bag's existing pseudo-bags with a
    second attention pool and classifies them: :math:`\hat Y = W_2 \operatorname{AttPool}_2(\{d_g\}) + b_2`.

    Splits: in training, each bag's real instances are ranked at random (``torch.rand``; the reference
    shuffles with numpy, which ``torch.manual_seed`` does not reproduce); in eval mode they keep their order,
    so pseudo-bag g holds a contiguous chunk of the bag's real instances: deterministic, and the same alone
    or padded in a batch. Padded instances are never in a pseudo-bag (the reference chunks the padded
    axis, and crashes in 'maxmin' / 'max' when mask is None).

    torchmil 1.0.2 (what :func:`milsdk.models.from_torchmil` reproduces): on every forward, eval mode too, it
    draws one ``np.random.shuffle`` of ``np.arange(N)`` from numpy's global RNG and cuts the shuffled order
    with ``np.array_split`` into :math:`\min(\text{n\_groups}, N)` pseudo-bags, so its outputs (the logits
    in 'afs', the pseudo-bag logits in every mode) are random; and its 'maxmin' / 'max' keep every instance
    of each pseudo-bag (``sort_idx[:, :chunk_size]``), so tier 2 pools all the bag's instances (each twice in
    'maxmin', the same softmax-weighted mean). milsdk's eval forward stays deterministic; two options give
    torchmil's function for a given grouping (default off: milsdk's behaviour above):

    - ``pseudo_bag_split="array_split"``: pseudo-bag sizes as ``np.array_split``'s (the first
      :math:`n \bmod G` get one instance more) instead of ``"proportional"``'s; with the bag's instances fed
      in torchmil's shuffled order, milsdk's pseudo-bags are torchmil's;
    - ``distill_instances="all"``: 'maxmin' / 'max' distil every real instance of each pseudo-bag, so tier 2
      pools the bag's real instances (no effect in 'afs', which distils :math:`z_g`).

    On a bag alone the two then agree (``tests/models/test_from_torchmil.py``). torchmil is not
    padding-invariant (its pseudo-bags chunk the padded axis: tier 2 pools padding in 'maxmin' / 'max', and
    an all-padding pseudo-bag gives NaN logits in 'afs'); milsdk with the options still is.

    Attention (``return_att``): the tier-1 instance CAM as logits (``attention_output = "logits"``; the
    deployment softmax over the bag's real instances makes it a distribution): :math:`s_i` for one output,
    for C > 1 its column of the class the bag's logits predict. It depends only on :math:`h_i` (and that
    class), not on the split.

    Losses: ``{crit}_t1`` the criterion over the tier-1 logits of every existing pseudo-bag against its
    bag's label, ``{crit}_t2`` the criterion on the bag logits. The reference uses the same keys the other way
    round (``_t1`` on the tier-2 output); here the suffix names the tier.

    Args:
        in_shape: shape of one instance, e.g. (1024,); None = lazy (inferred at the first forward).
        att_dim: hidden size of both attention pools.
        n_groups: maximum number of pseudo-bags per bag.
        distill_mode: 'maxmin', 'max' or 'afs'.
        feat_ext: instance feature extractor applied to X (default identity).
        criterion: loss (default BCEWithLogitsLoss for one output, CrossEntropyLoss for n_classes > 1).
        n_classes: number of outputs (1 = binary, logits (B,); C > 1 = logits (B, C)).
        pseudo_bag_split: pseudo-bag sizes, ``"proportional"`` (default) or ``"array_split"`` (torchmil's;
            see :func:`pseudo_bag_groups`).
        distill_instances: in 'maxmin' / 'max', ``"one"`` (default: the highest / lowest CAM instance of each
            pseudo-bag) or ``"all"`` (torchmil's: every instance of the pseudo-bag).
    """

    __constants__ = ["attention_output", "distill_instances", "distill_mode", "n_groups", "pseudo_bag_split"]
    test_config = {"att_dim": 8, "n_groups": 3}

    def __init__(
        self,
        in_shape: Sequence[int] | None = None,
        att_dim: int = 128,
        n_groups: int = 8,
        distill_mode: str = "maxmin",
        feat_ext: torch.nn.Module | None = None,
        criterion: torch.nn.Module | None = None,
        n_classes: int = 1,
        pseudo_bag_split: str = "proportional",
        distill_instances: str = "one",
    ) -> None:
        super().__init__()
        for name, value, allowed in (("distill_mode", distill_mode, DISTILL_MODES),
                                     ("pseudo_bag_split", pseudo_bag_split, PSEUDO_BAG_SPLITS),
                                     ("distill_instances", distill_instances, DISTILL_INSTANCES)):
            if value not in allowed:
                raise ModelConfigError(f"DTFDMIL: {name} must be one of {allowed}, got {value!r}")
        if n_groups < 1:
            raise ModelConfigError(f"DTFDMIL: n_groups must be >= 1, got {n_groups}")
        feat_dim = self.setup_head(feat_ext, in_shape, criterion, n_classes)
        self.n_groups = int(n_groups)
        self.distill_mode = distill_mode
        self.pseudo_bag_split = pseudo_bag_split
        self.distill_instances = distill_instances
        self.attention_pool = AttentionPool(in_dim=feat_dim, att_dim=att_dim)
        self.classifier = LazyLinear(feat_dim, n_classes)
        self.u_attention_pool = AttentionPool(in_dim=feat_dim, att_dim=att_dim)
        self.u_classifier = LazyLinear(feat_dim, n_classes)

    def _tiers(
        self, X: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """bag logits (B, C), pseudo-bag logits (B, n_groups, C) (0 where missing), CAM (B, N, C)."""
        H = self.feat_ext(X)  # (B, N, D)
        keep = as_bool_mask(mask, H)
        member, group_valid = pseudo_bag_groups(keep, self.n_groups, self.training, self.pseudo_bag_split)
        N, D = H.shape[1], H.shape[2]

        # Tier 1: the attention logits depend on h_i only, so one pass serves every pseudo-bag.
        f = self.attention_pool.attention_logits(H)  # (B, N)
        a = masked_softmax(f.unsqueeze(1).expand(-1, self.n_groups, -1), member, dim=2)  # (B, G, N)
        z = torch.bmm(a, H)  # (B, G, D)
        pseudo_logits = self.classifier(z) * group_valid.unsqueeze(-1).to(H.dtype)  # (B, G, C)
        cam = linear_in_weight_dtype(H, self.classifier.weight)  # (B, N, C)

        if self.distill_mode == "afs":
            distilled = z
            tier2_mask = group_valid
        elif self.distill_instances == "all":
            # Every instance of every pseudo-bag is the bag's real instances; torchmil's 'maxmin' takes each
            # twice, which leaves the softmax-weighted mean unchanged.
            distilled = H
            tier2_mask = keep
        else:
            group_class = pseudo_logits.argmax(dim=-1)  # (B, G); 0 for one output
            score = cam.transpose(1, 2).gather(1, group_class.unsqueeze(-1).expand(-1, -1, N))  # (B, G, N)
            top = score.masked_fill(~member, -3.4028234663852886e38).argmax(dim=2)  # (B, G)
            index = top
            if self.distill_mode == "maxmin":
                bottom = score.masked_fill(~member, 3.4028234663852886e38).argmin(dim=2)
                index = torch.cat([top, bottom], dim=1)  # (B, 2G)
            distilled = H.gather(1, index.unsqueeze(-1).expand(-1, -1, D))
            if self.distill_mode == "maxmin":
                tier2_mask = torch.cat([group_valid, group_valid], dim=1)
            else:
                tier2_mask = group_valid

        # Tier 2.
        bag_emb, _ = self.u_attention_pool.pool_with_logits(distilled, tier2_mask)
        logits = self.u_classifier(bag_emb)  # (B, C)
        return logits, pseudo_logits, cam

    def forward(
        self,
        X: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_att: bool = False,
        return_pseudo_pred: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Bag logits from tier 2.

        Args:
            X: (B, N, *in_shape) instance features.
            mask: (B, N) True / 1 = real instance (bool or uint8); None = all real.
            return_att: also return the tier-1 instance CAM (B, N), attention logits (see the class
                docstring).
            return_pseudo_pred: also return the tier-1 pseudo-bag logits, (B, n_groups) for one output,
                (B, n_groups, C) for C > 1; 0 for the pseudo-bags a small bag does not have. Not together
                with ``return_att`` (one extra output at a time keeps forward scriptable).

        Returns:
            logits (B,) for one output or (B, C); with one of the flags also the tensor it asks for.

        Raises:
            ValueError: both ``return_att`` and ``return_pseudo_pred``.
        """
        if return_att and return_pseudo_pred:
            raise ValueError(
                "DTFDMIL.forward: return_att and return_pseudo_pred cannot both be set; call it once for each"
            )
        logits, pseudo_logits, cam = self._tiers(X, mask)
        if return_att:
            if self.n_classes == 1:
                att = cam.squeeze(-1)
            else:
                predicted = logits.argmax(dim=-1).reshape(-1, 1, 1).expand(-1, cam.shape[1], 1)
                att = cam.gather(2, predicted).squeeze(-1)
            return self.squeeze_binary(logits), att
        if return_pseudo_pred:
            return self.squeeze_binary(logits), self.squeeze_binary(pseudo_logits)
        return self.squeeze_binary(logits)

    def compute_loss(
        self, Y: torch.Tensor, X: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward pass and the losses of both tiers.

        Args:
            Y: (B,) bag labels.
            X: (B, N, *in_shape); mask: (B, N).

        Returns:
            logits (B,) or (B, C); losses ``{crit + "_t1": criterion over the existing pseudo-bags' logits,
            each against its bag's label, crit + "_t2": criterion(bag logits, Y)}``.
        """
        logits, pseudo_logits = self(X, mask, return_pseudo_pred=True)
        keep = as_bool_mask(mask, X)
        _, group_valid = pseudo_bag_groups(keep, self.n_groups, shuffle=False)
        Y_groups = Y.reshape(-1, 1).expand(group_valid.shape)[group_valid]
        name = self.criterion.__class__.__name__
        if bool(group_valid.any()):
            tier1 = self.bag_loss(pseudo_logits[group_valid], Y_groups)[name]
        else:  # a batch of empty bags has no pseudo-bag; 0 keeps the graph connected
            tier1 = pseudo_logits.sum() * 0.0
        return logits, {f"{name}_t1": tier1, f"{name}_t2": self.bag_loss(logits, Y)[name]}
