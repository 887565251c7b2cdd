"""Whether the model is being traced by ``torch.export`` (the dynamo ONNX exporter), for modules whose exported
graph takes a different but equal form from their eager code (one that onnxruntime's memory planner holds in
less memory)."""

from __future__ import annotations

import torch

__all__ = ["exporting"]


def exporting() -> bool:
    """True while ``torch.export`` traces; False eagerly and under TorchScript (which never compiles the test)."""
    if not torch.jit.is_scripting():
        return torch.compiler.is_exporting()
    return False
