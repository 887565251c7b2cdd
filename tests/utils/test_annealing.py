"""Annealing schedulers: coefficients at given steps."""

import pytest

from milsdk.utils.annealing import (
    AnnealingScheduler,
    ConstantAnnealingScheduler,
    CyclicalAnnealingScheduler,
    LinearAnnealingScheduler,
)


def _coefs(scheduler, n):
    out = [scheduler()]
    for _ in range(n):
        scheduler.step()
        out.append(scheduler())
    return out


def test_base_scheduler_is_one_and_cannot_step():
    scheduler = AnnealingScheduler()
    assert scheduler() == 1.0
    with pytest.raises(NotImplementedError):
        scheduler.step()


def test_constant():
    assert _coefs(ConstantAnnealingScheduler(0.3), 3) == [0.3] * 4


def test_linear_continues_past_n_steps_unless_clamped():
    assert _coefs(LinearAnnealingScheduler(0.0, 1.0, n_steps=4), 6) == pytest.approx(
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    )
    assert _coefs(LinearAnnealingScheduler(1.0, 0.0, n_steps=2, clamp=True), 4) == pytest.approx(
        [1.0, 0.5, 0.0, 0.0, 0.0]
    )
    with pytest.raises(ValueError):
        LinearAnnealingScheduler(n_steps=0)


def test_cyclical_warmup_ramp_and_hold():
    # warm-up 2 steps at min, then (from step 3, torchmil's phase) cycles of 4: ramp over int(4 * 0.5) = 2 steps
    # (0, 0.5), hold 1 for 2 steps
    scheduler = CyclicalAnnealingScheduler(
        cycle_len=4, min_coef=0.0, max_coef=1.0, cycle_prop=0.5, warmup_steps=2
    )
    assert _coefs(scheduler, 11) == pytest.approx([0, 0, 0, 0, 0.5, 1, 1, 0, 0.5, 1, 1, 0])
    assert scheduler.coef_at(100) == scheduler.coef_at(100 - 4)


def test_cyclical_range_and_zero_ramp():
    scheduler = CyclicalAnnealingScheduler(cycle_len=5, min_coef=0.2, max_coef=0.6, cycle_prop=0.4)
    assert [scheduler.coef_at(t) for t in range(7)] == pytest.approx([0.2, 0.2, 0.4, 0.6, 0.6, 0.6, 0.2])
    jump = CyclicalAnnealingScheduler(cycle_len=3, cycle_prop=0.0)
    assert [jump.coef_at(t) for t in range(4)] == [0.0, 1.0, 1.0, 1.0]


def test_state_dict_round_trip():
    scheduler = LinearAnnealingScheduler(0.0, 1.0, n_steps=10)
    for _ in range(3):
        scheduler.step()
    other = LinearAnnealingScheduler(0.0, 1.0, n_steps=10)
    other.load_state_dict(scheduler.state_dict())
    other.step()
    assert other() == pytest.approx(0.4)
