"""Cox partial-likelihood loss: a hand case, Breslow ties, no events, ordering, shapes, TorchScript."""

from __future__ import annotations

import math

import pytest
import torch

from milsdk.nn.survival import CoxPHLoss, cox_ph_loss


def test_hand_case_three_bags_one_censored():
    risk = torch.tensor([0.5, -1.0, 2.0])
    Y = torch.tensor([[1.0, 1.0], [3.0, 0.0], [2.0, 1.0]])  # bag 1 censored at t=3
    # event at t=1: risk set {0, 1, 2}; event at t=2: risk set {1, 2}
    e = math.exp
    expected = -((0.5 - math.log(e(0.5) + e(-1.0) + e(2.0))) + (2.0 - math.log(e(-1.0) + e(2.0)))) / 2
    assert float(CoxPHLoss()(risk, Y)) == pytest.approx(expected, rel=1e-6)
    assert float(cox_ph_loss(risk.reshape(3, 1), Y)) == pytest.approx(expected, rel=1e-6)


def test_tied_times_share_their_risk_set_whatever_the_order():
    risk = torch.tensor([0.3, 1.2, -0.4])
    Y = torch.tensor([[2.0, 1.0], [2.0, 1.0], [5.0, 1.0]])
    perm = torch.tensor([1, 2, 0])
    assert torch.allclose(cox_ph_loss(risk, Y), cox_ph_loss(risk[perm], Y[perm]))
    e = math.exp
    full = math.log(e(0.3) + e(1.2) + e(-0.4))
    expected = -((0.3 - full) + (1.2 - full) + (-0.4 + 0.4)) / 3  # Breslow: both tied bags see all three
    assert float(cox_ph_loss(risk, Y)) == pytest.approx(expected, rel=1e-6)


def test_no_event_gives_zero_with_a_gradient_and_ordering_lowers_the_loss():
    risk = torch.tensor([0.2, -0.1], requires_grad=True)
    loss = cox_ph_loss(risk, torch.tensor([[1.0, 0.0], [2.0, 0.0]]))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(risk.grad, torch.zeros(2))
    Y = torch.tensor([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]])
    ordered = cox_ph_loss(torch.tensor([3.0, 2.0, 1.0]), Y)  # earlier events, higher risk
    reversed_ = cox_ph_loss(torch.tensor([1.0, 2.0, 3.0]), Y)
    assert float(ordered) < float(reversed_)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_wrong_target_shape_is_a_clear_error_and_the_loss_scripts():
    with pytest.raises(ValueError, match=r"\(B, 2\) rows \[time, event\]"):
        cox_ph_loss(torch.zeros(3), torch.zeros(3))
    scripted = torch.jit.script(CoxPHLoss())
    risk, Y = torch.randn(4), torch.tensor([[1.0, 1.0], [2.0, 0.0], [3.0, 1.0], [0.5, 1.0]])
    assert torch.allclose(scripted(risk, Y), cox_ph_loss(risk, Y))
