"""Errors of ``milsdk.visualize``, both part of the one ``MILSDKError`` hierarchy.

``MatplotlibMissingError`` is also an ``ImportError``: code that guards optional imports with
``except ImportError`` keeps working, and ``except MILSDKError`` catches it at the CLI boundary.
"""

from milsdk.errors import MILSDKError

__all__ = ["VisualizeError", "MatplotlibMissingError", "INSTALL_HINT"]

INSTALL_HINT = 'pip install "milsdk[viz]"'


class VisualizeError(MILSDKError, ValueError):
    """Inputs to a drawing function are malformed: wrong shape, non-finite values, unknown colour or rule."""


class MatplotlibMissingError(MILSDKError, ImportError):
    """Writing a PNG needs matplotlib, which is not installed (the array helpers work without it)."""
