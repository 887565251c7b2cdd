"""log_sum_exp, delta, detect_large: hand-computed cases."""

from __future__ import annotations

import math

import torch

from milsdk.nn.svm_helpers import delta, detect_large, log_sum_exp


def test_log_sum_exp_stable_and_exact():
    x = torch.tensor([[0.0, math.log(3.0)], [1000.0, 1000.0]])
    assert torch.allclose(log_sum_exp(x), torch.tensor([math.log(4.0), 1000.0 + math.log(2.0)]))


def test_delta_margin_matrix():
    out = delta(torch.tensor([0, 2]), torch.arange(3), alpha=2.0)
    assert out.tolist() == [[0.0, 2.0, 2.0], [2.0, 2.0, 0.0]] and out.dtype == torch.float32


def test_detect_large_splits_rows():
    x = torch.tensor([[10.0, 0.0, 0.0], [1.0, 0.9, 0.0]])
    smooth, hard = detect_large(x, 1, 1.0, 1e3)
    assert hard.tolist() == [True, False] and smooth.tolist() == [False, True]
