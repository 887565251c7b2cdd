"""Fixtures shared by every test module."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren, ...), read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def run_process_tree(
    command: Sequence[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``command`` to completion; on timeout kill it and every process it started, then fail the test.

    Unlike ``subprocess.run(..., timeout=...)`` this cannot hang: output goes to files, not pipes, so a
    grandchild in its own session (torchrun starts each worker with ``start_new_session=True``) that outlives
    its parent holds no pipe open, and the whole tree is found through /proc and killed.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(list(command), stdout=out, stderr=err, text=True, env=env,
                                   start_new_session=True)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            tree = [process.pid, *_descendants(process.pid)]
            for pid in tree:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.wait()
            out.seek(0)
            err.seek(0)
            pytest.fail(f"{' '.join(command[:6])} ... did not finish in {timeout:.0f} s; killed {len(tree)} "
                        f"processes.\nstdout tail:\n{out.read()[-2000:]}\nstderr tail:\n{err.read()[-3000:]}")
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(list(command), process.returncode, out.read(), err.read())


@pytest.fixture(scope="session")
def process_descendants() -> Callable[[int], list[int]]:
    """:func:`_descendants`: every process below a pid (zombies included), read from /proc."""
    return _descendants


@pytest.fixture(scope="session")
def process_tree_runner() -> Callable[..., subprocess.CompletedProcess]:
    """:func:`run_process_tree`, for tests that start process trees (torchrun, milsdk train --nproc)."""
    return run_process_tree


@pytest.fixture(scope="session")
def registered_export(tmp_path_factory) -> Callable[..., tuple]:
    """``get(name, n_classes, fmt, dim)``: the registered model ``name`` in its declared test configuration
    (``torch.manual_seed(0)``, then ``cls(in_shape=(dim,), n_classes=n_classes, **cls.test_config)``, eval mode)
    and its ``fmt`` ("onnx" / "torchscript") artifact, both made once per session on first use.

    The contract suite and the integration suite check the same exports (at the same ``dim``): exporting the
    registry twice took about 80 s of the test run. The model is shared: a test must not change it.
    """
    import torch

    from milsdk.export.onnx import export_onnx
    from milsdk.export.torchscript import export_torchscript
    from milsdk.models import get_model_class

    exporters = {"onnx": (export_onnx, "model.onnx"), "torchscript": (export_torchscript, "model.pt")}
    models: dict[tuple[str, int, int], torch.nn.Module] = {}
    paths: dict[tuple[str, int, int, str], Path] = {}
    root = tmp_path_factory.mktemp("registered_exports")

    def get(name: str, n_classes: int, fmt: str, dim: int) -> tuple[torch.nn.Module, Path]:
        key = (name, n_classes, dim)
        if key not in models:
            cls = get_model_class(name)
            torch.manual_seed(0)
            models[key] = cls(in_shape=(dim,), n_classes=n_classes, **cls.test_config).eval()
        if (*key, fmt) not in paths:
            export, filename = exporters[fmt]
            folder = root / f"{name}_C{n_classes}_D{dim}"
            folder.mkdir(exist_ok=True)
            paths[(*key, fmt)] = export(models[key], folder / filename)
        return models[key], paths[(*key, fmt)]

    return get
