"""Metrics from raw logits: numbers checked against small hand-computed cases."""

import math

import pytest
import torch

from milsdk.utils.metrics import AUROC, F1, Accuracy, BalancedAccuracy, Mean, binary_auroc, default_metrics


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
