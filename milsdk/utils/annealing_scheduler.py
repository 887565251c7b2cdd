"""torchmil path ``torchmil.utils.annealing_scheduler``: re-exports ``milsdk.utils.annealing``."""

from milsdk.utils.annealing import (
    AnnealingScheduler,
    ConstantAnnealingScheduler,
    CyclicalAnnealingScheduler,
    LinearAnnealingScheduler,
)

__all__ = ["AnnealingScheduler", "ConstantAnnealingScheduler", "CyclicalAnnealingScheduler", "LinearAnnealingScheduler"]
