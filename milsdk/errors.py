"""The one exception hierarchy of milsdk.

Every error raised at a boundary (dataset, checkpoint, export, client, CLI) is a ``MILSDKError`` whose message is
one line naming the input and what is wrong. Subclasses also derive from the builtin a caller would expect
(``ValueError`` for bad input, ``FileNotFoundError`` for missing files, ``ConnectionError`` for servers), so code
written against the builtins keeps working. :func:`first_line` reduces a third-party exception (a runtime's
multi-page trace) to the one line such a message quotes.
"""


class MILSDKError(Exception):
    """Base class of every milsdk error."""


class BagError(MILSDKError, ValueError):
    """A bag is malformed: empty, wrong feature dim, non-finite values, inconsistent keys."""


class DatasetError(MILSDKError, ValueError):
    """A dataset folder or file is missing, unreadable or inconsistent."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset file or folder does not exist: both a ``DatasetError`` and a ``FileNotFoundError`` (what
    torchmil's datasets raise there), so either ``except`` catches it."""


class CheckpointError(MILSDKError, ValueError):
    """A checkpoint file is missing, corrupt, foreign or unsafe."""


class ModelConfigError(MILSDKError, ValueError):
    """A model cannot be built from the given name or configuration."""


class ExportError(MILSDKError, RuntimeError):
    """Exporting a model to ONNX / TorchScript failed."""


class ExportWriteError(ExportError, OSError):
    """An exported file could not be written (a full disk, a quota, permissions): both an ``ExportError`` and the
    ``OSError`` a caller of a file-writing function expects."""


class VerificationError(ExportError):
    """An exported artifact disagrees with eager PyTorch beyond tolerance."""

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class ArtifactError(MILSDKError, ValueError):
    """An exported artifact (.onnx / .pt) is missing, unreadable or lacks milsdk metadata."""


class ServingError(MILSDKError, RuntimeError):
    """A backend failed to run a batch."""


class ServerURLError(MILSDKError, ValueError):
    """A server URL or protocol the client cannot use (unknown scheme, scheme contradicting the protocol)."""


class ServerUnavailableError(ServingError, ConnectionError):
    """A server could not be reached (down, wrong URL, not ready)."""


class ServerStartError(ServingError):
    """A Triton server could not be started (no binary, port taken, model failed to load)."""


class TrainingInterrupted(MILSDKError):
    """Training was interrupted (Ctrl-C / SIGINT); ``checkpoint`` is the best model saved so far, or None.

    The command line exits with ``exit_code`` (130, the shell's code for a SIGINT), not 1: an interrupt is the
    user's choice, not a failure.
    """

    exit_code = 130

    def __init__(self, message: str, checkpoint: object | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


def first_line(exc: BaseException, *, with_type: bool = False) -> str:
    """The first non-blank line of an exception's message, stripped; the type name when the message is blank.

    Args:
        exc: the exception, e.g. onnxruntime's or torch.onnx's, whose message runs over many lines.
        with_type: prefix the type name (``"KeyError: 'x'"``): for exporter errors, whose message alone
            (``'x'``) does not say what went wrong.

    Returns:
        one line, never empty: ``"bad value"`` (``"ValueError: bad value"`` with ``with_type``), or
        ``"ValueError"`` for a blank message.
    """
    for line in str(exc).splitlines():
        if line.strip():
            return f"{type(exc).__name__}: {line.strip()}" if with_type else line.strip()
    return type(exc).__name__
