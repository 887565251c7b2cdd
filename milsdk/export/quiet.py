"""Keep the third-party exporters quiet: silence their progress prints and warnings (their multi-page errors
are reduced to one line by :func:`milsdk.errors.first_line`)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

__all__ = ["quiet_exporter"]

_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "torch.jit")


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence warnings and sub-error log lines of torch.onnx / torch.export / torch.jit inside the block."""
    loggers = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
