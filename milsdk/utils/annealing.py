"""Annealing schedulers: coefficients for the terms of a model's loss, stepped once per optimizer step.

The Trainer takes ``annealing_scheduler_dict={loss_name: scheduler}`` and weighs each loss term by
``scheduler()`` (terms without a scheduler weigh 1), e.g. a KL term warmed up from 0 to 1. Calling a scheduler
returns its current coefficient; ``step()`` advances it; ``coef_at(t)`` is the coefficient after ``t`` steps.
"""

from __future__ import annotations

import logging

__all__ = [
    "AnnealingScheduler",
    "ConstantAnnealingScheduler",
    "CyclicalAnnealingScheduler",
    "LinearAnnealingScheduler",
]

logger = logging.getLogger(__name__)


class AnnealingScheduler:
    """Base class: a coefficient that changes with the number of steps taken (starts at 1.0).

    Subclasses implement ``coef_at(step)``; ``step()`` increments ``step_count`` and updates ``coef``.
    """

    def __init__(self) -> None:
        self.step_count = 0
        self.coef = 1.0

    def __call__(self) -> float:
        """The current coefficient."""
        return self.coef

    def coef_at(self, step: int) -> float:
        """The coefficient after ``step`` calls to ``step()``."""
        raise NotImplementedError(f"{type(self).__name__} does not define coef_at")

    def step(self) -> None:
        """Advance one step."""
        self.step_count += 1
        self.coef = self.coef_at(self.step_count)

    def state_dict(self) -> dict[str, float]:
        """The step count and coefficient (to resume training)."""
        return {"step_count": self.step_count, "coef": self.coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore what ``state_dict`` returned."""
        self.step_count = int(state["step_count"])
        self.coef = float(state["coef"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(step_count={self.step_count}, coef={self.coef:g})"


class ConstantAnnealingScheduler(AnnealingScheduler):
    """A coefficient that never changes.

    Args:
        coef: the coefficient.
    """

    def __init__(self, coef: float = 1.0) -> None:
        super().__init__()
        self.coef = float(coef)

    def coef_at(self, step: int) -> float:
        """Always ``coef``."""
        return self.coef


class LinearAnnealingScheduler(AnnealingScheduler):
    """Linear ramp: ``coef_at(t) = coef_init + t (coef_end - coef_init) / n_steps``.

    As in the reference, the ramp continues past ``n_steps`` unless ``clamp`` is set, in which case it stops
    at ``coef_end``.

    Args:
        coef_init: coefficient at step 0.
        coef_end: coefficient at step ``n_steps``.
        n_steps: length of the ramp (> 0).
        clamp: hold ``coef_end`` after ``n_steps``.
    """

    def __init__(
        self, coef_init: float = 0.0, coef_end: float = 1.0, n_steps: int = 100, clamp: bool = False
    ) -> None:
        super().__init__()
        if n_steps <= 0:
            raise ValueError(f"LinearAnnealingScheduler: n_steps must be > 0, got {n_steps}")
        self.coef_init = float(coef_init)
        self.coef_end = float(coef_end)
        self.n_steps = int(n_steps)
        self.clamp = clamp
        self.coef = self.coef_at(0)

    def coef_at(self, step: int) -> float:
        """``coef_init + step (coef_end - coef_init) / n_steps`` (held at ``coef_end`` after the ramp if
        clamped)."""
        if self.clamp:
            step = min(step, self.n_steps)
        return self.coef_init + step * (self.coef_end - self.coef_init) / self.n_steps


class CyclicalAnnealingScheduler(AnnealingScheduler):
    """Cyclical annealing (Fu et al., NAACL 2019): ``min_coef`` during a warm-up, then repeated cycles of
    ``cycle_len`` steps, each a linear ramp from ``min_coef`` to ``max_coef`` over ``int(cycle_len *
    cycle_prop)`` steps followed by ``max_coef`` for the rest of the cycle.

    With ``p = (t - warmup_steps - 1) mod cycle_len`` and ``r = int(cycle_len * cycle_prop)``:
    ``coef_at(t) = min_coef`` for ``t <= warmup_steps``, ``min_coef + (max_coef - min_coef) p / r`` for ``p <
    r``, else ``max_coef``. As torchmil 1.0.2's, the first step after the warm-up starts the first cycle at its
    phase 0 (the coefficient is ``min_coef`` before it and after it), so the coefficient at every step equals
    torchmil's: training with either library weighs the losses the same.

    Args:
        cycle_len: steps per cycle (> 0).
        min_coef, max_coef: coefficient range.
        cycle_prop: fraction of each cycle spent ramping up, in [0, 1] (0 = jump straight to ``max_coef``).
        warmup_steps: steps held at ``min_coef`` before the first cycle.
        verbose: log each new coefficient (logging level INFO).
    """

    def __init__(
        self,
        cycle_len: int,
        min_coef: float = 0.0,
        max_coef: float = 1.0,
        cycle_prop: float = 0.5,
        warmup_steps: int = 0,
        verbose: bool = False,
    ) -> None:
        super().__init__()
        if cycle_len <= 0:
            raise ValueError(f"CyclicalAnnealingScheduler: cycle_len must be > 0, got {cycle_len}")
        if not 0.0 <= cycle_prop <= 1.0:
            raise ValueError(f"CyclicalAnnealingScheduler: cycle_prop must be in [0, 1], got {cycle_prop}")
        self.cycle_len = int(cycle_len)
        self.min_coef = float(min_coef)
        self.max_coef = float(max_coef)
        self.cycle_prop = float(cycle_prop)
        self.warmup_steps = int(warmup_steps)
        self.verbose = verbose
        self.ramp_steps = int(self.cycle_len * self.cycle_prop)
        self.coef = self.coef_at(0)

    def coef_at(self, step: int) -> float:
        """The coefficient after ``step`` steps (see the class docstring)."""
        if step <= self.warmup_steps:
            return self.min_coef
        phase = (step - self.warmup_steps - 1) % self.cycle_len
        if phase < self.ramp_steps:
            return self.min_coef + (self.max_coef - self.min_coef) * phase / self.ramp_steps
        return self.max_coef

    def step(self) -> None:
        """Advance one step (and log the coefficient when ``verbose``)."""
        super().step()
        if self.verbose:
            logger.info("CyclicalAnnealingScheduler step %d: coef %g", self.step_count, self.coef)
