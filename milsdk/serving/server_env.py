"""The Python environment that Triton's Python backend runs ``model.py`` in.

The backend stub runs ``model.py`` with the Python first on PATH when the server starts and exchanges arrays in
numpy 1.x's layout: under numpy 2, requests succeed but outputs come back empty. So the server side gets its own
small environment with ``numpy<2`` and onnxruntime (no torch), while the client keeps numpy 2. It is created once
(``python -m venv`` + pip) and reused:

    python -m milsdk.serving.server_env            # create / check it ahead of time (setup scripts, CI)

Location: ``$MILSDK_TRITON_PYTHON`` if set, else ``$XDG_CACHE_HOME/milsdk/triton-python-env`` (default
``~/.cache/milsdk/triton-python-env``). The value may also name an existing environment's ``python`` executable.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from milsdk.errors import ServerStartError

__all__ = [
    "ENV_VAR",
    "SERVER_PACKAGES",
    "cache_env_path",
    "default_env_path",
    "ensure_server_env",
    "server_python",
    "numpy_version",
]

log = logging.getLogger(__name__)

#: environment variable naming the server-side environment (a folder) or its Python executable.
ENV_VAR = "MILSDK_TRITON_PYTHON"
#: what ``model.py`` of a milsdk export needs on the server side.
SERVER_PACKAGES = ("numpy<2", "onnxruntime>=1.18")
_MARKER = "milsdk-server-env.json"


def cache_env_path(name: str) -> Path:
    """``$XDG_CACHE_HOME/milsdk/<name>`` (~/.cache by default): where milsdk keeps the environments it makes."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "milsdk" / name


def default_env_path() -> Path:
    """``$MILSDK_TRITON_PYTHON``, else ``$XDG_CACHE_HOME/milsdk/triton-python-env`` (~/.cache by default)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return cache_env_path("triton-python-env")


def server_python(location: str | Path) -> Path:
    """The Python executable of an environment folder, or ``location`` itself when it is an executable file."""
    location = Path(location).expanduser()
    if location.is_file():
        return location
    return location / "bin" / "python"


def numpy_version(python: str | Path) -> str | None:
    """numpy's version in the environment of ``python``; None if numpy is missing or Python does not run."""
    try:
        done = subprocess.run(
            [str(python), "-c", "import numpy; print(numpy.__version__)"],
            capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_server_env(
    location: str | Path | None = None,
    base_python: str | Path | None = None,
    packages: tuple[str, ...] = SERVER_PACKAGES,
) -> Path:
    """Create the server-side environment if needed and return its Python executable.

    An existing environment is reused when it was made by this function for the same ``packages`` (marker
    file) or, for a location the caller made, when its numpy is < 2. Where there is none (or one without numpy),
    it is made with ``base_python -m venv`` and ``pip install`` of ``packages`` (needs PyPI or a local index;
    about 10-30 s, once).

    Args:
        location: environment folder or Python executable; None = :func:`default_env_path`.
        base_python: the interpreter that creates a new environment (default: this one's base interpreter, so
            that the Python version matches the backend stub chosen for it).
        packages: pip requirements of the environment; default :data:`SERVER_PACKAGES`. Other sets make other
            numpy-1 environments, e.g. an older onnxruntime that exports are checked against (then give each
            set its own ``location``, see :func:`cache_env_path`).

    Returns:
        Path of the environment's ``python``.

    Raises:
        ServerStartError: creation failed, or a given environment has numpy >= 2 (the trap described above).
    """
    location = Path(location).expanduser() if location is not None else default_env_path()
    python = server_python(location)
    env_dir = python.parent.parent
    marker = env_dir / _MARKER
    made_here = marker.is_file() and python.is_file()
    if made_here and json.loads(marker.read_text()).get("packages") == list(packages):
        return python
    version = numpy_version(python) if python.is_file() and not made_here else None
    if version is not None:
        if int(version.split(".")[0]) >= 2:
            raise ServerStartError(
                f"{python}: has numpy {version}; Triton's Python backend returns empty outputs under numpy 2. "
                f"Install numpy<2 there, or unset {ENV_VAR} to use a managed environment"
            )
        return python
    # no environment there yet, or one left half-made: (re)create it
    base = str(base_python or getattr(sys, "_base_executable", None) or sys.executable)
    log.info("creating the Triton server-side Python environment in %s (%s)", env_dir, ", ".join(packages))
    steps = [
        [base, "-m", "venv", str(env_dir)],
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet", *packages],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True)
        except OSError as exc:
            done = subprocess.CompletedProcess(step, 127, "", str(exc))
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise ServerStartError(
                f"cannot create the Triton server-side Python environment in {env_dir}: "
                f"{' '.join(step[:4])} ... failed: {' | '.join(tail)}"
            )
    version = numpy_version(python)
    marker.write_text(json.dumps({"packages": list(packages), "numpy": version}) + "\n")
    return python


def _main() -> None:
    python = ensure_server_env()
    print(f"{python} (numpy {numpy_version(python)})")


if __name__ == "__main__":
    _main()
