"""milsdk: deep Multiple Instance Learning from training to deployment.

Subpackages: ``milsdk.data``, ``milsdk.datasets``, ``milsdk.nn``, ``milsdk.models``, ``milsdk.utils``,
``milsdk.export`` (all need torch); ``milsdk.serving`` and ``milsdk.visualize`` (numpy only, no torch).

``import milsdk`` itself imports no torch, so that ``import milsdk.serving`` stays light; the checkpoint
functions are loaded on first use.
"""

from milsdk._version import __version__
from milsdk.errors import MILSDKError

__all__ = ["__version__", "MILSDKError", "save_checkpoint", "load_checkpoint"]


def __getattr__(name: str):
    if name in ("save_checkpoint", "load_checkpoint"):
        from milsdk.utils import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'milsdk' has no attribute {name!r}")
