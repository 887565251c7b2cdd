"""Atomic file placement: an interrupted or failed export never leaves a half-written file or folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "place_tree"]


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
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        _publish_modes(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def place_tree(source: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Move the finished folder ``source`` to ``dest``.

    A new ``dest`` appears in one rename (copied first to a hidden sibling, so it works across file systems).
    An existing ``dest`` keeps its other files; each of ours replaces its namesake in one rename, folders
    recursively.

    Returns:
        ``dest``.
    """
    source, dest = Path(source), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
        try:
            shutil.copytree(source, staging, dirs_exist_ok=True)
            _publish_modes(staging)
            os.replace(staging, dest)
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
