"""Training utilities: Trainer, metrics, loss-coefficient schedules, graph utilities, checkpoints.

The graph utilities and annealing schedules need only numpy, and the serving client (which must work without
torch) builds graphs with ``milsdk.utils.graph``: the torch-based names are therefore imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from milsdk.utils.annealing import (
    AnnealingScheduler,
    ConstantAnnealingScheduler,
    CyclicalAnnealingScheduler,
    LinearAnnealingScheduler,
)
from milsdk.utils.graph import add_self_loops, build_adj, degree, normalize_adj

#: name -> module of the names that need torch.
_LAZY = {
    "Checkpoint": "milsdk.utils.checkpoint",
    "load_checkpoint": "milsdk.utils.checkpoint",
    "read_checkpoint": "milsdk.utils.checkpoint",
    "save_checkpoint": "milsdk.utils.checkpoint",
    "AUROC": "milsdk.utils.metrics",
    "F1": "milsdk.utils.metrics",
    "Accuracy": "milsdk.utils.metrics",
    "BalancedAccuracy": "milsdk.utils.metrics",
    "ConcordanceIndex": "milsdk.utils.metrics",
    "Mean": "milsdk.utils.metrics",
    "Metric": "milsdk.utils.metrics",
    "Trainer": "milsdk.utils.trainer",
    "keep_only_existing_files": "milsdk.utils.common",
    "read_csv": "milsdk.utils.common",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'milsdk.utils' has no attribute {name!r}")


__all__ = [
    "AUROC",
    "Accuracy",
    "AnnealingScheduler",
    "BalancedAccuracy",
    "Checkpoint",
    "ConcordanceIndex",
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
    "keep_only_existing_files",
    "load_checkpoint",
    "normalize_adj",
    "read_csv",
    "read_checkpoint",
    "save_checkpoint",
]
