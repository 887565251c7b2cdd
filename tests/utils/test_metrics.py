"""Metrics from raw logits: numbers checked against small hand-computed cases."""

import math

import pytest
import torch

from milsdk.utils.metrics import (
    AUROC,
    F1,
    Accuracy,
    BalancedAccuracy,
    ConcordanceIndex,
    Mean,
    binary_auroc,
    concordance_index,
    default_metrics,
)


def test_binary_auroc_hand_case_with_ties():
    # positives 0.35, 0.8, 0.4 vs negatives 0.1, 0.4:
    # 0.35 beats 0.1 (1) loses to 0.4 (0); 0.8 beats both (2); 0.4 beats 0.1 (1), ties 0.4 (1/2) -> 4.5 / 6
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4])
    labels = torch.tensor([0, 0, 1, 1, 1])
    assert binary_auroc(scores, labels) == pytest.approx(0.75, abs=1e-12)


def test_binary_auroc_all_tied_is_half_and_single_class_is_nan():
    assert binary_auroc(torch.zeros(4), torch.tensor([0, 1, 0, 1])) == pytest.approx(0.5)
    assert math.isnan(binary_auroc(torch.rand(3), torch.ones(3)))


def test_auroc_metric_streams_batches_and_uses_logits_order():
    metric = AUROC()
    metric.update(torch.tensor([0.1, 0.4]), torch.tensor([0.0, 0.0]))
    metric.update(torch.tensor([[0.35], [0.8], [0.4]]), torch.tensor([1, 1, 1]))  # (B, 1) binary logits
    assert metric.compute() == pytest.approx(0.75)
    metric.reset()
    logits = torch.tensor([-3.0, 2.0, 0.5, 4.0, 2.0])
    metric.update(logits, torch.tensor([0, 0, 1, 1, 1]))
    assert metric.compute() == pytest.approx(0.75)  # same order as the hand case: same AUC


def test_auroc_multiclass_one_vs_rest_macro():
    # softmax(log p) = p; per class (positives vs the rest):
    # class 0: 0.7 vs {0.2, 0.1, 0.1, 0.5} -> 1
    # class 1: {0.5, 0.25} vs {0.2, 0.3, 0.35} -> (3 + 1) / 6
    # class 2: {0.6, 0.15} vs {0.1, 0.3, 0.65} -> (2 + 1) / 6
    p = torch.tensor(
        [[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.1, 0.25, 0.65], [0.5, 0.35, 0.15]]
    )
    metric = AUROC()
    metric.update(p.log(), torch.tensor([0, 1, 2, 1, 2]))
    assert metric.compute() == pytest.approx((1 + 4 / 6 + 3 / 6) / 3)


def test_accuracy_binary_thresholds_logits_at_zero():
    # 0.3 is a logit (probability 0.57): positive. 0.0 is probability 0.5: negative.
    logits = torch.tensor([-1.0, 0.5, 2.0, -0.2, 0.0, 0.3])
    Y = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 1.0])
    metric = Accuracy()
    metric.update(logits, Y)
    assert metric.compute() == pytest.approx(4 / 6)


def test_accuracy_multiclass_argmax_over_batches():
    metric = Accuracy()
    metric.update(torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0]]), torch.tensor([0, 2]))
    metric.update(torch.tensor([[0.0, 0.0, 5.0]]), torch.tensor([2]))
    assert metric.compute() == pytest.approx(2 / 3)
    metric.reset()
    assert math.isnan(metric.compute())


def test_balanced_accuracy_and_f1():
    # labels 1 1 1 1 0 0; predictions 1 1 1 0 1 0 -> recall(1) = 3/4, recall(0) = 1/2
    logits = torch.tensor([1.0, 1.0, 1.0, -1.0, 1.0, -1.0])
    Y = torch.tensor([1, 1, 1, 1, 0, 0])
    bal, f1 = BalancedAccuracy(), F1()
    bal.update(logits, Y)
    f1.update(logits, Y)
    assert bal.compute() == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert f1.compute() == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # tp 3, fp 1, fn 1


def test_f1_multiclass_macro():
    # true 0 1 2 2, predicted 0 2 2 2: F1(0) = 1, F1(1) = 0, F1(2) = 2*2/(2*2+1) = 0.8
    logits = torch.eye(3)[[0, 2, 2, 2]] * 3
    f1 = F1()
    f1.update(logits, torch.tensor([0, 1, 2, 2]))
    assert f1.compute() == pytest.approx((1 + 0 + 0.8) / 3)


def test_mean_is_weighted():
    mean = Mean()
    mean.update(torch.tensor(1.0), 3)
    mean.update(2.0, 1)
    assert mean.compute() == pytest.approx(1.25)


def test_to_moves_states_and_default_metrics():
    metric = AUROC().to("cpu")
    metric.update(torch.tensor([1.0, -1.0]), torch.tensor([1, 0]))
    assert metric.scores[0].device.type == "cpu"
    assert sorted(default_metrics()) == ["accuracy", "auroc"]
    with pytest.raises(ValueError, match="unknown metric"):
        default_metrics(["nope"])


# -- concordance index (survival) -----------------------------------------------------------------------------
def test_c_index_perfect_reversed_and_tied_risks():
    time = torch.tensor([1.0, 2.0, 3.0, 4.0])
    event = torch.ones(4)
    assert concordance_index(torch.tensor([4.0, 3.0, 2.0, 1.0]), time, event) == 1.0  # earlier death, higher risk
    assert concordance_index(torch.tensor([1.0, 2.0, 3.0, 4.0]), time, event) == 0.0
    assert concordance_index(torch.zeros(4), time, event) == 0.5


def test_c_index_hand_case_with_censoring_and_tied_times():
    risk = torch.tensor([0.9, 0.1, 0.5, 0.3])
    time = torch.tensor([1.0, 2.0, 2.0, 4.0])
    event = torch.tensor([1, 0, 1, 1])
    # comparable (earlier time is an event): (0,1) (0,2) (0,3) (2,3); bag 1 is censored, (1,2) tie in time
    # concordant: 0.9>0.1, 0.9>0.5, 0.9>0.3, 0.5>0.3 -> 4 / 4; flip bag 3's risk above bag 2's: 3 / 4
    assert concordance_index(risk, time, event) == 1.0
    assert concordance_index(torch.tensor([0.9, 0.1, 0.5, 0.6]), time, event) == 0.75
    assert math.isnan(concordance_index(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]), torch.zeros(2)))


def test_c_index_metric_streams_batches_and_checks_targets():
    g = torch.Generator().manual_seed(0)
    risk = torch.randn(2500, generator=g)
    Y = torch.stack([torch.rand(2500, generator=g) * 10, (torch.rand(2500, generator=g) < 0.7).float()], 1)
    metric = default_metrics(["c_index"])["c_index"]
    assert isinstance(metric, ConcordanceIndex)
    for start in range(0, 2500, 700):
        metric.update(risk[start : start + 700].reshape(-1, 1), Y[start : start + 700])
    assert metric.compute() == pytest.approx(concordance_index(risk, Y[:, 0], Y[:, 1]), abs=1e-12)
    time, event = Y[:, 0].double(), Y[:, 1].bool()
    pairs = (time[:, None] < time[None, :]) & event[:, None]
    score = (risk[:, None] > risk[None, :]).double() + 0.5 * (risk[:, None] == risk[None, :]).double()
    assert metric.compute() == pytest.approx(float((score * pairs).sum() / pairs.sum()), abs=1e-12)
    metric.reset()
    assert math.isnan(metric.compute())
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        metric.update(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="one risk score"):
        metric.update(torch.zeros(3, 2), torch.zeros(3, 2))
