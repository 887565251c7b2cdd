"""Atomic file placement: an interrupted or failed export never leaves a half-written file or folder."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from milsdk.errors import ExportError, ExportWriteError

__all__ = ["atomic_write", "check_folder_target", "place_tree", "write_error"]

# errno values that mean "no room": the message then says so
_NO_SPACE = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _first_error(exc: OSError) -> OSError:
    """copytree reports every failed file in one ``shutil.Error`` of (src, dst, reason) triples: the first one,
    as an OSError with its errno, is what the user needs to read."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        reason = str(exc.args[0][0][2])
        code = re.match(r"\[Errno (\d+)\] (.*)", reason)
        return OSError(int(code.group(1)), code.group(2)) if code else OSError(errno.EIO, reason)
    return exc


def write_error(path: str | os.PathLike, exc: OSError) -> ExportWriteError:
    """The one-line error for a write that failed: the file, the system's reason, and a hint when the disk (or a
    quota, or a file-size limit) is full."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    hint = "; is the disk full?" if exc.errno in _NO_SPACE else ""
    return ExportWriteError(f"{path}: cannot write it ({reason}){hint}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_modes(root: Path) -> None:
    """Give ``root`` (a file, or a folder and everything in it) the modes of a normally created file / folder:
    temporary files are private (0600 / 0700), published artifacts must be readable by a server's user."""
    mask = _umask()
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for p in paths:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``.

    Returns:
        ``path``. On any error (or interrupt) the temporary file is removed and ``path`` is untouched.

    Raises:
        ExportWriteError: the file cannot be written (full disk, permissions), naming it.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    os.close(fd)
    try:
        write(tmp)
        _publish_modes(Path(tmp))
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a file-size limit, permissions: one line naming the file
        raise write_error(path, exc) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def check_folder_target(dest: str | os.PathLike, what: str, names: tuple[str, ...] = ()) -> Path:
    """Check, before any work, that ``dest`` can become (or already is) a folder that takes files ``names``.

    An export runs for minutes before it places its files; a target that cannot hold them must fail first,
    not after, and not after the other target was already written.

    Args:
        dest: the folder to be written (it may not exist yet).
        what: how the error names it, e.g. "--output" or "--triton".
        names: names of the files that will be placed inside ``dest``.

    Returns:
        ``dest``.

    Raises:
        ExportError: ``dest`` or one of its parents is an existing file, a name inside ``dest`` is taken by a
            folder, or the nearest existing folder is not writable.
    """
    dest = Path(dest)
    for folder in (dest, *dest.parents):
        if folder.exists() and not folder.is_dir():
            where = "is an existing file" if folder == dest else f"is inside {folder}, an existing file"
            raise ExportError(f"{what} {dest}: {where}, not a folder")
        if folder.is_dir():
            if not os.access(folder, os.W_OK | os.X_OK):
                raise ExportError(f"{what} {dest}: folder {folder} is not writable")
            break
    for name in names:
        target = dest / name
        if target.is_dir():
            raise ExportError(f"{what} {dest}: {target} is a folder, where the file {name} must go")
    return dest


def place_tree(source: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Move the finished folder ``source`` to ``dest``.

    A new ``dest`` appears in one rename (copied first to a hidden sibling, so it works across file systems).
    An existing ``dest`` keeps its other files; each of ours replaces its namesake in one rename, folders
    recursively.

    Returns:
        ``dest``.

    Raises:
        ExportWriteError: a file cannot be written (full disk, permissions), naming the target; nothing is left
            half written.
    """
    source, dest = Path(source), Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            staging = None
        else:
            staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    except OSError as exc:
        raise write_error(dest, exc) from None
    if staging is not None:
        try:
            shutil.copytree(source, staging, dirs_exist_ok=True)
            _publish_modes(staging)
            os.replace(staging, dest)
        except OSError as exc:
            raise write_error(dest, _first_error(exc)) from None
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        return dest
    for item in sorted(source.iterdir()):
        target = dest / item.name
        if item.is_dir():
            place_tree(item, target)
        else:
            atomic_write(target, lambda tmp, item=item: shutil.copyfile(item, tmp))
    return dest
