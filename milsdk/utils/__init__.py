"""Training utilities: Trainer, metrics, loss-coefficient schedules, graph utilities, checkpoints."""

from milsdk.utils.annealing import (
    AnnealingScheduler,
    ConstantAnnealingScheduler,
    CyclicalAnnealingScheduler,
    LinearAnnealingScheduler,
)
from milsdk.utils.checkpoint import Checkpoint, load_checkpoint, read_checkpoint, save_checkpoint
from milsdk.utils.graph import add_self_loops, build_adj, degree, normalize_adj
from milsdk.utils.metrics import AUROC, F1, Accuracy, BalancedAccuracy, Mean, Metric
from milsdk.utils.trainer import Trainer

__all__ = [
    "AUROC",
    "Accuracy",
    "AnnealingScheduler",
    "BalancedAccuracy",
    "Checkpoint",
    "ConstantAnnealingScheduler",
    "CyclicalAnnealingScheduler",
    "F1",
    "LinearAnnealingScheduler",
    "Mean",
    "Metric",
    "Trainer",
    "add_self_loops",
    "build_adj",
    "degree",
    "load_checkpoint",
    "normalize_adj",
    "read_checkpoint",
    "save_checkpoint",
]
