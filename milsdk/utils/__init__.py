"""Training and model-management utilities: checkpoints (Trainer, schedulers and graph utils join here)."""

from milsdk.utils.checkpoint import Checkpoint, load_checkpoint, read_checkpoint, save_checkpoint

__all__ = ["Checkpoint", "load_checkpoint", "read_checkpoint", "save_checkpoint"]
