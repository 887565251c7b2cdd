"""Bag-level classification metrics and the survival C-index from raw logits, plus a running mean for losses.

Every metric follows the torchmetrics protocol the Trainer relies on (``update`` / ``compute`` / ``reset`` /
``to``), so a torchmetrics object can be used in their place. Unlike torchmetrics, inputs are **always
logits**: a binary logit in [0, 1] is never mistaken for a probability.

Shapes: ``logits`` (B,) or (B, 1) for binary, (B, C) with C >= 2 for C classes; ``Y`` (B,) labels (0/1 or
class indices, any numeric dtype).

Under ``torch.distributed`` (when a process group is initialised and has more than one rank), ``compute``
combines the states of all ranks first: counts are summed and stored predictions gathered, so the value equals
the one a single process would compute on the union of the data. Every rank must then call ``compute`` (the
Trainer does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist

__all__ = [
    "AUROC",
    "F1",
    "Accuracy",
    "BalancedAccuracy",
    "ConcordanceIndex",
    "Mean",
    "Metric",
    "binary_auroc",
    "concordance_index",
    "default_metrics",
]


# -- helpers -------------------------------------------------------------------------------------------------
def _is_binary(logits: torch.Tensor) -> bool:
    return logits.dim() == 1 or (logits.dim() == 2 and logits.shape[1] == 1)


def _flat_labels(Y: torch.Tensor, n: int) -> torch.Tensor:
    Y = torch.as_tensor(Y).reshape(-1)
    if Y.numel() != n:
        raise ValueError(f"metric: Y has {Y.numel()} labels for {n} bags")
    return Y.long()


def _predicted_classes(logits: torch.Tensor) -> torch.Tensor:
    """(B,) predicted labels: logit > 0 (probability > 0.5) for binary, argmax for multiclass."""
    if _is_binary(logits):
        return (logits.reshape(-1) > 0).long()
    return logits.argmax(dim=-1)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate over all ranks, along dim 0, a 1-D or 2-D tensor whose row count may differ between ranks
    (an empty rank may hold a (0,) tensor where the others hold (n, C))."""
    shape = torch.tensor([t.shape[0], t.shape[1] if t.dim() == 2 else -1], device=t.device, dtype=torch.long)
    shapes = [torch.zeros_like(shape) for _ in range(_world())]
    dist.all_gather(shapes, shape)
    rows = [int(s[0]) for s in shapes]
    cols = max(int(s[1]) for s in shapes)
    trailing = (cols,) if cols >= 0 else ()
    t = t.reshape(t.shape[0], *trailing)
    padded = t.new_zeros((max(rows), *trailing))
    padded[: t.shape[0]] = t
    out = [torch.zeros_like(padded) for _ in rows]
    dist.all_gather(out, padded.contiguous())
    return torch.cat([o[:r] for o, r in zip(out, rows)])


def binary_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact area under the ROC curve (Mann-Whitney U), ties counted as one half.

    .. math:: \\mathrm{AUC} = \\frac{R_+ - n_+ (n_+ + 1)/2}{n_+ n_-}

    where :math:`R_+` is the sum of the mid-ranks of the positives' scores.

    Args:
        scores: (n,) higher = more positive (logits or probabilities; only their order matters).
        labels: (n,) 0/1.

    Returns:
        The AUC, or NaN when one of the two classes is absent.
    """
    scores = scores.reshape(-1).double()
    labels = labels.reshape(-1).bool()
    n_pos = int(labels.sum())
    n_neg = labels.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    sorted_scores, order = torch.sort(scores)
    _, counts = torch.unique_consecutive(sorted_scores, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mid_ranks = ends - (counts.double() - 1) / 2  # 1-based mid-rank of each tie group
    ranks = torch.empty_like(scores)
    ranks[order] = torch.repeat_interleave(mid_ranks, counts)
    rank_sum = ranks[labels].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


# -- base class ----------------------------------------------------------------------------------------------
class Metric:
    """Accumulates tensor states over batches; ``compute`` reduces them (across ranks when distributed).

    Subclasses declare states with ``_add_state(name, reduce)``: ``"sum"`` states are tensors summed across
    ranks, ``"cat"`` states are lists of tensors concatenated along dim 0.
    """

    def __init__(self) -> None:
        self._reductions: dict[str, str] = {}
        self._defaults: dict[str, torch.Tensor] = {}
        self.device = torch.device("cpu")
        #: reduce over the ranks of the process group in ``compute`` (False: this process's data only, e.g. an
        #: evaluation that rank 0 runs alone)
        self.sync_across_ranks = True

    def _add_state(self, name: str, reduce: str, default: torch.Tensor | None = None) -> None:
        self._reductions[name] = reduce
        if reduce == "sum":
            assert default is not None
            self._defaults[name] = default
        self._reset_state(name)

    def _reset_state(self, name: str) -> None:
        if self._reductions[name] == "sum":
            setattr(self, name, self._defaults[name].clone().to(self.device))
        else:
            setattr(self, name, [])

    def reset(self) -> None:
        """Forget everything seen since the last reset."""
        for name in self._reductions:
            self._reset_state(name)

    def to(self, device: torch.device | str) -> Metric:
        """Keep the states on ``device`` (needed for NCCL, which reduces CUDA tensors only). Returns self."""
        self.device = torch.device(device)
        for name, reduce in self._reductions.items():
            value = getattr(self, name)
            setattr(
                self, name, value.to(self.device) if reduce == "sum" else [v.to(self.device) for v in value]
            )
        return self

    def _states(self) -> dict[str, torch.Tensor]:
        """Every state reduced over the ranks of the default process group (local when not distributed)."""
        out: dict[str, torch.Tensor] = {}
        world = self._world_size()
        for name, reduce in self._reductions.items():
            value = getattr(self, name)
            if reduce == "sum":
                value = value.clone()
                if world > 1:
                    dist.all_reduce(value)
            else:
                value = torch.cat(value) if value else self._empty(name)
                if world > 1:
                    value = _gather_rows(value)
            out[name] = value
        return out

    def _world_size(self) -> int:
        """Ranks whose data ``compute`` reduces over (1 when not distributed or not syncing)."""
        return _world() if self.sync_across_ranks else 1

    def _empty(self, name: str) -> torch.Tensor:
        return torch.zeros(0, device=self.device)

    def update(self, logits: torch.Tensor, Y: torch.Tensor) -> None:  # pragma: no cover - interface
        """Add one batch: ``logits`` (B,) / (B, 1) / (B, C), ``Y`` (B,)."""
        raise NotImplementedError

    def compute(self) -> float:  # pragma: no cover - interface
        """The metric over everything seen since the last reset (all ranks)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Mean(Metric):
    """Weighted running mean, e.g. of a loss: ``update(value, weight)``, ``compute() = Σ w·v / Σ w``.

    The Trainer weights each batch's loss by its number of bags, so the epoch loss is the mean over bags and
    is the same whether the data were split into batches (or ranks) or not.
    """

    def __init__(self) -> None:
        super().__init__()
        self._add_state("total", "sum", torch.zeros((), dtype=torch.float64))
        self._add_state("weight", "sum", torch.zeros((), dtype=torch.float64))

    def update(self, value: torch.Tensor | float, weight: float = 1.0) -> None:  # type: ignore[override]
        """Add ``value`` (a scalar) with ``weight``."""
        value = torch.as_tensor(value).detach().to(self.device, torch.float64)
        self.total += value * weight
        self.weight += weight

    def compute(self) -> float:
        """Σ w·v / Σ w over all updates (NaN before the first update)."""
        states = self._states()
        weight = float(states["weight"])
        return float(states["total"]) / weight if weight > 0 else float("nan")


class _ConfusionMetric(Metric):
    """Accumulates a confusion matrix (true class x predicted class), grown as new classes appear."""

    def __init__(self, num_classes: int | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        size = max(num_classes or 2, 2)
        self._add_state("confusion", "sum", torch.zeros((size, size), dtype=torch.long))

    def update(self, logits: torch.Tensor, Y: torch.Tensor) -> None:
        """Add one batch: ``logits`` (B,) / (B, 1) binary or (B, C); ``Y`` (B,) labels."""
        logits = logits.detach()
        pred = _predicted_classes(logits).to(self.device)
        target = _flat_labels(Y, pred.numel()).to(self.device)
        n_out = 2 if _is_binary(logits) else logits.shape[-1]
        size = max(self.confusion.shape[0], n_out, int(target.max()) + 1 if target.numel() else 0)
        if size > self.confusion.shape[0]:
            if self.num_classes is not None:
                raise ValueError(
                    f"{type(self).__name__}: label or class {size - 1} >= num_classes {self.num_classes}"
                )
            grown = torch.zeros((size, size), dtype=torch.long, device=self.device)
            k = self.confusion.shape[0]
            grown[:k, :k] = self.confusion
            self.confusion = grown
        self.confusion += torch.bincount(target * size + pred, minlength=size * size).reshape(size, size)

    def _synced_confusion(self) -> torch.Tensor:
        # Ranks may have grown their matrices to different sizes: agree on the largest first.
        confusion = self.confusion
        if self._world_size() > 1:
            size = torch.tensor([confusion.shape[0]], device=self.device)
            dist.all_reduce(size, op=dist.ReduceOp.MAX)
            k = int(size.item())
            if k > confusion.shape[0]:
                grown = torch.zeros((k, k), dtype=torch.long, device=self.device)
                grown[: confusion.shape[0], : confusion.shape[0]] = confusion
                confusion = grown
            confusion = confusion.clone()
            dist.all_reduce(confusion)
        return confusion.double()


class Accuracy(_ConfusionMetric):
    """Fraction of bags whose predicted label equals Y.

    Binary (logits (B,)): predicted positive iff logit > 0, i.e. probability > 0.5. Multiclass: argmax.

    Args:
        num_classes: optional; fixes the number of classes (labels outside raise). Inferred when None.
    """

    def compute(self) -> float:
        """Accuracy in [0, 1] (NaN before the first update)."""
        c = self._synced_confusion()
        total = c.sum().item()
        return c.diagonal().sum().item() / total if total else float("nan")


class BalancedAccuracy(_ConfusionMetric):
    """Mean over the classes present in Y of the per-class recall (robust to class imbalance)."""

    def compute(self) -> float:
        """Balanced accuracy in [0, 1] (NaN before the first update)."""
        c = self._synced_confusion()
        support = c.sum(dim=1)
        present = support > 0
        if not present.any():
            return float("nan")
        return (c.diagonal()[present] / support[present]).mean().item()


class F1(_ConfusionMetric):
    """F1 score: of the positive class for binary logits, macro-averaged over classes for (B, C) logits.

    A class that is never true nor predicted is left out of the macro average; a binary F1 with no positive
    prediction and no positive label is 0.
    """

    def __init__(self, num_classes: int | None = None) -> None:
        super().__init__(num_classes)
        self._binary: bool | None = None

    def update(self, logits: torch.Tensor, Y: torch.Tensor) -> None:
        """Add one batch (see :class:`Accuracy`)."""
        self._binary = _is_binary(logits)
        super().update(logits, Y)

    def compute(self) -> float:
        """F1 in [0, 1] (NaN before the first update)."""
        c = self._synced_confusion()
        if c.sum() == 0:
            return float("nan")
        tp = c.diagonal()
        denom = c.sum(dim=0) + c.sum(dim=1)  # predicted + true = 2tp + fp + fn
        if self._binary is not False and c.shape[0] == 2:
            return (2 * tp[1] / denom[1]).item() if denom[1] > 0 else 0.0
        used = denom > 0
        return (2 * tp[used] / denom[used]).mean().item()


class AUROC(Metric):
    """Area under the ROC curve, exact (rank statistic, ties count one half); every prediction is kept.

    Binary (logits (B,)): AUC of the logits. Multiclass (B, C): one-vs-rest AUC of the softmax probabilities,
    macro-averaged over the classes that have both positives and negatives. NaN when no class has both.
    """

    def __init__(self) -> None:
        super().__init__()
        self._add_state("scores", "cat")
        self._add_state("labels", "cat")

    def _empty(self, name: str) -> torch.Tensor:
        if name == "labels":
            return torch.zeros(0, dtype=torch.long, device=self.device)
        return torch.zeros(0, device=self.device)

    def update(self, logits: torch.Tensor, Y: torch.Tensor) -> None:
        """Add one batch: ``logits`` (B,) / (B, 1) or (B, C); ``Y`` (B,)."""
        logits = logits.detach().float()
        scores = logits.reshape(-1) if _is_binary(logits) else torch.softmax(logits, dim=-1)
        self.scores.append(scores.to(self.device))
        self.labels.append(_flat_labels(Y, logits.shape[0]).to(self.device))

    def compute(self) -> float:
        """AUC in [0, 1] (NaN when undefined)."""
        states = self._states()
        scores, labels = states["scores"], states["labels"]
        if scores.numel() == 0:
            return float("nan")
        if scores.dim() == 1:
            return binary_auroc(scores.cpu(), labels.cpu() > 0)
        values = [binary_auroc(scores[:, c].cpu(), (labels == c).cpu()) for c in range(scores.shape[1])]
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / len(values) if values else float("nan")


def concordance_index(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> float:
    r"""Harrell's concordance index of risk scores against censored survival times.

    .. math:: C = \frac{\sum_{i,j} \mathbb{1}[t_i < t_j,\, e_i]\,\big(\mathbb{1}[r_i > r_j]
              + \tfrac12 \mathbb{1}[r_i = r_j]\big)}{\sum_{i,j} \mathbb{1}[t_i < t_j,\, e_i]}

    A pair is comparable when the earlier time is an observed event (pairs with equal times are not); it is
    concordant when the earlier one has the higher risk; tied risks count one half. 1 = perfect ranking,
    0.5 = random or constant scores, 0 = reversed. Pairs are counted in row blocks: O(n^2) time, O(n) memory
    per block row.

    Args:
        risk: (n,) risk scores, higher = shorter expected survival (the model's logit).
        time: (n,) follow-up times.
        event: (n,) 1 / True = event observed, 0 = censored.

    Returns:
        C in [0, 1], or NaN when no pair is comparable.
    """
    risk, time = risk.reshape(-1).double(), time.reshape(-1).double()
    event = event.reshape(-1) != 0
    concordant, comparable = 0.0, 0.0
    for start in range(0, risk.numel(), 1024):
        r, t, e = risk[start : start + 1024], time[start : start + 1024], event[start : start + 1024]
        pairs = (t.unsqueeze(1) < time.unsqueeze(0)) & e.unsqueeze(1)
        higher, tied = r.unsqueeze(1) > risk.unsqueeze(0), r.unsqueeze(1) == risk.unsqueeze(0)
        score = higher.double() + 0.5 * tied.double()
        concordant += float((score * pairs).sum())
        comparable += float(pairs.sum())
    return concordant / comparable if comparable > 0 else float("nan")


class ConcordanceIndex(Metric):
    """Harrell's C-index of survival models (:func:`concordance_index`), over every bag seen.

    ``update(logits, Y)``: ``logits`` (B,) or (B, 1) risk scores (higher = higher hazard); ``Y`` (B, 2) rows
    ``[time, event]`` (event 1 = observed, 0 = censored), the survival targets of ``milsdk.nn.survival``. Use
    it in the Trainer with ``metrics_dict={"c_index": ConcordanceIndex()}, obj_metric="c_index"``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._add_state("risks", "cat")
        self._add_state("times", "cat")
        self._add_state("events", "cat")

    def update(self, logits: torch.Tensor, Y: torch.Tensor) -> None:
        """Add one batch: ``logits`` (B,) / (B, 1), ``Y`` (B, 2) [time, event]."""
        logits = logits.detach().float()
        if not _is_binary(logits):
            raise ValueError(
                f"ConcordanceIndex: expected one risk score per bag, got logits {tuple(logits.shape)}"
            )
        risk = logits.reshape(-1)
        Y = torch.as_tensor(Y).detach()
        if Y.dim() != 2 or Y.shape != (risk.numel(), 2):
            raise ValueError(
                f"ConcordanceIndex: Y must be (B, 2) rows [time, event] for {risk.numel()} bags, "
                f"got shape {tuple(Y.shape)}"
            )
        self.risks.append(risk.to(self.device))
        self.times.append(Y[:, 0].float().to(self.device))
        self.events.append((Y[:, 1] != 0).float().to(self.device))

    def compute(self) -> float:
        """C in [0, 1] (NaN when no pair is comparable)."""
        states = self._states()
        return concordance_index(states["risks"].cpu(), states["times"].cpu(), states["events"].cpu())


def default_metrics(names: Sequence[str] = ("accuracy", "auroc")) -> dict[str, Metric]:
    """Fresh metric objects by name: ``accuracy``, ``balanced_accuracy``, ``f1``, ``auroc``, ``c_index``
    (survival: ``Y`` (B, 2) [time, event])."""
    known = {
        "accuracy": Accuracy,
        "balanced_accuracy": BalancedAccuracy,
        "f1": F1,
        "auroc": AUROC,
        "c_index": ConcordanceIndex,
    }
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown metric name(s) {unknown}; known: {sorted(known)}")
    return {name: known[name]() for name in names}
