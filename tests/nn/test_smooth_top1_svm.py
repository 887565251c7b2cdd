import math

import pytest
import torch

from milsdk.nn import SmoothTop1SVM


def test_shapes_of_each_reduction():
    x, y = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    assert SmoothTop1SVM(3)(x, y).shape == ()
    assert SmoothTop1SVM(3, reduction="sum")(x, y).shape == ()
    per_sample = SmoothTop1SVM(3, reduction="none")(x, y)
    assert per_sample.shape == (5,)
    assert torch.allclose(SmoothTop1SVM(3)(x, y), per_sample.mean())
    assert torch.allclose(SmoothTop1SVM(3, reduction="sum")(x, y), per_sample.sum())


def test_hand_computed_smooth_and_hard_cases():
    loss = SmoothTop1SVM(2, reduction="none")
    # gap 2 < log(1000): smooth, tau log(exp(0) + exp(1 + 0 - 2))
    smooth = loss(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
    assert smooth.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # gap 10 >= log(1000): hard, max(10 + 1, 0 + 0) - 0 = 11 (the smooth value would be 11.0000167)
    hard = loss(torch.tensor([[10.0, 0.0]]), torch.tensor([1]))
    assert hard.item() == pytest.approx(11.0, abs=1e-6)
    # three classes, alpha 0.5, tau 2: 2 log(exp((0.5 + 1 - 0) / 2) + exp(0) + exp((0.5 - 1 - 0) / 2))
    x = torch.tensor([[1.0, 0.0, -1.0]])
    got = SmoothTop1SVM(3, alpha=0.5, tau=2.0)(x, torch.tensor([1]))
    want = 2 * math.log(math.exp(0.75) + 1 + math.exp(-0.25))
    assert got.item() == pytest.approx(want, abs=1e-6)


def test_column_targets_and_float_targets_equal_index_targets():
    x, y = torch.randn(4, 2), torch.tensor([1, 0, 0, 1])
    loss = SmoothTop1SVM(2)
    assert torch.equal(loss(x, y), loss(x, y.unsqueeze(-1).float()))


def test_gradient_is_finite_for_large_and_tied_scores():
    x = torch.tensor([[1e4, -1e4], [3.0, 3.0], [0.0, 50.0]], requires_grad=True)
    SmoothTop1SVM(2)(x, torch.tensor([1, 0, 1])).backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def test_empty_batch_gives_zero_and_bad_inputs_raise():
    assert SmoothTop1SVM(2)(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)).item() == 0.0
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        SmoothTop1SVM(2)(torch.zeros(3, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="n_classes"):
        SmoothTop1SVM(1)


def test_scripted_equals_eager():
    x, y = torch.randn(6, 2) * 5, torch.randint(0, 2, (6,))
    loss = SmoothTop1SVM(2, reduction="none")
    assert torch.allclose(torch.jit.script(loss)(x, y), loss(x, y))
