"""Start and stop a real Triton Inference Server on a model repository written by ``milsdk export --triton``.

    with TritonServer("model_repository") as server:      # free loopback ports, waits until every model is ready
        client = MILClient.from_triton(server.http_url, "abmil")

The binary is the ``tritonserver`` on PATH (NVIDIA's container: every backend) or else the one inside the
``nvidia-pytriton`` wheel (CPU, Python backend only), found without importing ``pytriton``. For the wheel's server
this module supplies what it lacks: its shared libraries on LD_LIBRARY_PATH, a writable backends folder with the
Python-backend stub for the server-side Python, and that Python first on PATH, from an environment with numpy<2
(:mod:`milsdk.serving.server_env`). The wheel's server only loads the repository's Python-backend models.

Defaults are the hardened ones an operator wants (``milsdk serve`` uses them): model control mode ``none`` (the
models are loaded at start and no client can load, unload or replace one; ``explicit`` only when asked), loopback
only, no metrics endpoint unless a metrics port is given, and the APIs named in ``restricted_apis`` answer only
requests that carry the header ``milsdk-api-key: <api_key>`` (Triton's ``--http-restricted-api`` /
``--grpc-restricted-protocol``).
"""

from __future__ import annotations

import ctypes
import errno
import importlib.util
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from milsdk.errors import ServerStartError
from milsdk.serving.backends.triton import API_KEY_HEADER, api_key_headers
from milsdk.serving.server_env import ENV_VAR, ensure_server_env

__all__ = ["RESTRICTABLE_APIS", "TritonBinary", "TritonServer", "find_tritonserver", "repository_models"]

log = logging.getLogger(__name__)

_LOOPBACK = "127.0.0.1"
_LOG_TAIL_LINES = 12
#: Triton API groups that ``--http-restricted-api`` / ``--grpc-restricted-protocol`` can put behind a key.
RESTRICTABLE_APIS = (
    "health", "metadata", "inference", "shared-memory", "model-config", "model-repository", "statistics", "trace",
    "logging",
)
_CONTROL_MODES = ("none", "explicit")
_REGION_PREFIX = "/dev/shm/triton_python_backend_shm_region_"
#: prctl option from <linux/prctl.h>: the signal a process gets when its parent thread ends
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class TritonBinary:
    """A ``tritonserver`` executable and where it came from.

    Attributes:
        path: the executable.
        wheel_root: the ``pytriton/tritonserver`` folder for the binary of the nvidia-pytriton wheel (which needs
            its libraries, backends folder and stubs set up), None for a complete installation.
    """

    path: Path
    wheel_root: Path | None = None

    @property
    def python_backend_only(self) -> bool:
        """The wheel's server has the Python backend and no other."""
        return self.wheel_root is not None


def find_tritonserver(binary: str | Path | None = None) -> TritonBinary:
    """Locate the server: ``binary`` if given, else ``tritonserver`` on PATH, else the nvidia-pytriton wheel's.

    Raises:
        ServerStartError: none found (the message says how to get one).
    """
    if binary is not None:
        path = Path(binary)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ServerStartError(f"{path}: not an executable tritonserver")
        return TritonBinary(path, _wheel_root_of(path))
    on_path = shutil.which("tritonserver")
    if on_path:
        return TritonBinary(Path(on_path))
    spec = importlib.util.find_spec("pytriton")  # locates the package without importing it (it needs its deps)
    if spec is not None and spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
        candidate = root / "bin" / "tritonserver"
        if candidate.is_file():
            return TritonBinary(candidate, root)
    raise ServerStartError(
        "no tritonserver found: not on PATH and no nvidia-pytriton wheel installed "
        "(pip install --no-deps nvidia-pytriton, or run NVIDIA's Triton container: serving/triton_container.sh)"
    )


def _wheel_root_of(path: Path) -> Path | None:
    root = path.resolve().parent.parent
    return root if (root / "python_backend_stubs").is_dir() else None


def repository_models(repository: str | Path) -> dict[str, str]:
    """The models of a Triton repository and their backend.

    Returns:
        {model name: backend}, the backend from ``config.pbtxt`` (``backend: "python"``; for ``platform:
        "onnxruntime_onnx"`` / ``"pytorch_libtorch"`` the platform), sorted by name.

    Raises:
        ServerStartError: the folder does not exist or holds no model with a config.pbtxt.
    """
    repository = Path(repository)
    if not repository.is_dir():
        raise ServerStartError(f"{repository}: model repository not found")
    models = {}
    for config in sorted(repository.glob("*/config.pbtxt")):
        text = config.read_text(errors="replace")
        found = re.search(r'^\s*(?:backend|platform)\s*:\s*"([^"]+)"', text, flags=re.MULTILINE)
        models[config.parent.name] = found.group(1) if found else "unknown"
    if not models:
        raise ServerStartError(f"{repository}: no model (no */config.pbtxt); write one with milsdk export --triton")
    return models


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _check_port(host: str, port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: a port whose old connections linger in TIME_WAIT is free for a new server
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            reason = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise ServerStartError(f"{what} port {port} on {host} is {reason}; pick another or omit it") from None


def _get(url: str, headers: dict[str, str], timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return 0


class TritonServer:
    """A Triton server process on a model repository, bound to loopback by default.

    Args:
        repository: the model repository folder.
        http_port, grpc_port: ports; 0 = a free port picked at start.
        metrics_port: Prometheus metrics port; 0 = a free one; None (default) = no metrics endpoint.
        host: address to bind (default 127.0.0.1; "0.0.0.0" to serve other hosts).
        models: models to load; None = every model the binary can run (the wheel's server: the Python-backend
            ones).
        binary: the tritonserver executable; None = :func:`find_tritonserver`.
        backend_python: server-side Python environment (folder or executable) for the Python backend; None =
            ``$MILSDK_TRITON_PYTHON`` or the managed environment, for the wheel's server (created on first use).
            A full Triton installation keeps its own Python unless this is given.
        exit_timeout_s: how long the server waits for in-flight requests when stopped.
        startup_timeout_s: how long :meth:`start` waits for every model to be ready.
        log_path: server log file; None = a temporary file, removed by :meth:`stop`.
        model_control_mode: "none" (default: the models are loaded at start, the model-repository API cannot
            change them) or "explicit" (clients may load / unload models through that API).
        restricted_apis: API groups (:data:`RESTRICTABLE_APIS`) that answer only requests carrying the header
            ``milsdk-api-key: <api_key>``; default none.
        api_key: the key of the restricted APIs; None = a random one (see :attr:`api_key`) when any is restricted.
    """

    def __init__(
        self,
        repository: str | Path,
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int | None = None,
        host: str = _LOOPBACK,
        models: Sequence[str] | None = None,
        binary: str | Path | None = None,
        backend_python: str | Path | None = None,
        exit_timeout_s: int = 5,
        startup_timeout_s: float = 120.0,
        log_path: str | Path | None = None,
        model_control_mode: str = "none",
        restricted_apis: Sequence[str] = (),
        api_key: str | None = None,
    ) -> None:
        if model_control_mode not in _CONTROL_MODES:
            raise ServerStartError(
                f"model_control_mode must be one of {_CONTROL_MODES}, got {model_control_mode!r}"
            )
        unknown = sorted(set(restricted_apis) - set(RESTRICTABLE_APIS))
        if unknown:
            raise ServerStartError(
                f"cannot restrict {unknown}: Triton's API groups are {', '.join(RESTRICTABLE_APIS)}"
            )
        if api_key is not None and not re.fullmatch(r"[\w.~+/-]{8,}", api_key):
            # the key travels inside a command-line flag "apis:header=key" and an HTTP header
            raise ServerStartError("api_key must be at least 8 characters of letters, digits and _ . ~ + / -")
        self.repository = Path(repository).resolve()
        self.host = host
        self.ports = {"http": int(http_port), "grpc": int(grpc_port)}
        if metrics_port is not None:
            self.ports["metrics"] = int(metrics_port)
        self.model_control_mode = model_control_mode
        self.restricted_apis = tuple(dict.fromkeys(restricted_apis))
        self.api_key = (api_key or secrets.token_urlsafe(24)) if self.restricted_apis else None
        self.models = list(models) if models is not None else None
        self._binary = binary
        self.backend_python = backend_python
        self.exit_timeout_s = int(exit_timeout_s)
        self.startup_timeout_s = float(startup_timeout_s)
        self.log_path = Path(log_path) if log_path is not None else None
        self.process: subprocess.Popen | None = None
        self.loaded_models: list[str] = []
        self._log_file: Path | None = None
        self._workdir: Path | None = None
        self._finalizer: weakref.finalize | None = None

    # -- addresses -----------------------------------------------------------------------------------------------
    @property
    def _client_host(self) -> str:
        return _LOOPBACK if self.host in ("0.0.0.0", "") else self.host

    @property
    def http_url(self) -> str:
        """``http://host:port`` of the HTTP/REST endpoint."""
        return f"http://{self._client_host}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        """``grpc://host:port`` of the gRPC endpoint."""
        return f"grpc://{self._client_host}:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str | None:
        """Prometheus metrics URL; None when the server has no metrics endpoint."""
        if "metrics" not in self.ports:
            return None
        return f"http://{self._client_host}:{self.ports['metrics']}/metrics"

    @property
    def headers(self) -> dict[str, str]:
        """The headers a request to a restricted API must carry, for HTTP and gRPC ({} when none is
        restricted)."""
        return api_key_headers(self.api_key) if self.api_key else {}

    @property
    def log_file(self) -> Path | None:
        """The server log of the current run."""
        return self._log_file

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self.process.pid if self.process is not None else None

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> TritonServer:
        """Start the server and wait until it and every model are ready.

        Raises:
            ServerStartError: no binary, a port taken, no loadable model, or the server exited or was not ready
                within ``startup_timeout_s`` (the message ends with the server log's last lines).
        """
        if self.process is not None and self.process.poll() is None:
            return self
        self.stop()  # a server that died (killed, crashed) leaves its work folder; a restart starts clean
        binary = find_tritonserver(self._binary)
        available = repository_models(self.repository)
        models = self._models_to_load(available, binary)
        for what, port in self.ports.items():
            if port:
                _check_port(self.host, port, what)
        for what in self.ports:
            if not self.ports[what]:
                self.ports[what] = _free_port(self.host)
        self._workdir = Path(tempfile.mkdtemp(prefix="milsdk-triton-"))
        env = dict(os.environ)
        command = [
            str(binary.path),
            f"--model-repository={self._repository_to_serve(models, available)}",
            f"--http-address={self.host}", f"--http-port={self.ports['http']}",
            f"--grpc-address={self.host}", f"--grpc-port={self.ports['grpc']}",
            *self._metrics_flags(),
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--model-control-mode={self.model_control_mode}",
        ]
        if self.model_control_mode == "explicit":
            command += [f"--load-model={name}" for name in models]
        if self.restricted_apis:
            rule = f"{','.join(self.restricted_apis)}:{API_KEY_HEADER}={self.api_key}"
            command += [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]
        python = self._server_python(binary)
        if python is not None:
            env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
        if binary.wheel_root is not None:
            libs = binary.wheel_root.parent.parent / "nvidia_pytriton.libs"
            env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
            command.append(f"--backend-directory={self._backends_dir(binary, python)}")
        self._log_file = self.log_path or self._workdir / "server.log"
        log.debug("starting %s", " ".join(command))
        with open(self._log_file, "ab") as log_file:
            self.process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,  # Ctrl-C in a terminal reaches us; we stop the server ourselves
                preexec_fn=_ends_with_its_parent(),
            )
        regions: set[Path] = set()
        self._finalizer = weakref.finalize(self, _terminate, self.process, self.exit_timeout_s, regions)
        self.loaded_models = models
        try:
            self._wait_ready(models)
        except BaseException:
            self.stop()
            raise
        regions |= _backend_regions(self.process.pid)  # known now, in case the process is killed later
        return self

    def _metrics_flags(self) -> list[str]:
        if "metrics" not in self.ports:
            return ["--allow-metrics=false"]
        return [f"--metrics-address={self.host}", f"--metrics-port={self.ports['metrics']}"]

    def _repository_to_serve(self, models: list[str], available: dict[str, str]) -> Path:
        """The repository itself, or, where mode "none" must load only some of its models (the wheel's server
        cannot run the others, or ``models`` chose them), a folder of links to those models alone: mode "none"
        loads every model it finds, and a model that fails to load stops the server."""
        if self.model_control_mode == "explicit" or set(models) == set(available):
            return self.repository
        staged = self._workdir / "repository"
        staged.mkdir()
        for name in models:
            (staged / name).symlink_to(self.repository / name, target_is_directory=True)
        return staged

    def _models_to_load(self, available: dict[str, str], binary: TritonBinary) -> list[str]:
        if self.models is not None:
            unknown = sorted(set(self.models) - set(available))
            if unknown:
                raise ServerStartError(f"{self.repository}: no model {unknown}; models there: {sorted(available)}")
            return list(self.models)
        if not binary.python_backend_only:
            return sorted(available)
        models = sorted(name for name, backend in available.items() if backend == "python")
        skipped = sorted(set(available) - set(models))
        if not models:
            raise ServerStartError(
                f"{self.repository}: no Python-backend model, and the pip-installed server ({binary.path}) has only "
                "the Python backend; export with the triton-python profile, or run NVIDIA's container"
            )
        if skipped:
            log.warning("the pip-installed server has only the Python backend; not loading %s", ", ".join(skipped))
        return models

    def _server_python(self, binary: TritonBinary) -> Path | None:
        """The Python the backend stub will run: given, from $MILSDK_TRITON_PYTHON, or managed (wheel only)."""
        if self.backend_python is not None:
            return ensure_server_env(self.backend_python)
        if binary.python_backend_only or os.environ.get(ENV_VAR):
            return ensure_server_env()
        return None

    def _backends_dir(self, binary: TritonBinary, python: Path | None) -> Path:
        """A writable copy of the wheel's backends with the Python-backend stub for the server-side Python."""
        version = _python_version(python) if python is not None else None
        stub = binary.wheel_root / "python_backend_stubs" / str(version) / "triton_python_backend_stub"
        if not stub.is_file():
            found = sorted(p.name for p in (binary.wheel_root / "python_backend_stubs").iterdir())
            raise ServerStartError(f"no Triton Python-backend stub for Python {version} (the wheel has {found})")
        backends = self._workdir / "backends"
        shutil.copytree(binary.wheel_root / "backends", backends)
        shutil.copy2(stub, backends / "python" / stub.name)
        return backends

    def _wait_ready(self, models: list[str]) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        waiting = ["server", *models]
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServerStartError(f"Triton exited with code {code} while starting: {self.log_tail()}")
            # with the key: the health API may be restricted too
            if _get(f"{self.http_url}/v2/health/ready", self.headers) == 200:
                waiting = [m for m in models if _get(f"{self.http_url}/v2/models/{m}/ready", self.headers) != 200]
                if not waiting:
                    return
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"Triton at {self.http_url} not ready after {self.startup_timeout_s:g} s (waiting for "
                    f"{', '.join(waiting)}): {self.log_tail()}"
                )
            time.sleep(0.1)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the server log (NVML/DCGM warnings dropped), joined with " | "."""
        if self._log_file is None or not self._log_file.is_file():
            return ""
        text = self._log_file.read_text(errors="replace").splitlines()
        useful = [line.strip() for line in text if line.strip() and not re.search(r"NVML|DCGM|^W\d{4}", line)]
        return " | ".join(useful[-lines:])

    def wait(self) -> int:
        """Block until the server exits; its exit code."""
        return self.process.wait() if self.process is not None else 0

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``exit_timeout_s`` + 10 s) and remove temporary files."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self.process = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.pid else "stopped"
        return f"TritonServer({str(self.repository)!r}, {self.http_url}, {state})"


def _backend_regions(pid: int) -> set[Path]:
    """The Python backend's shared-memory regions that server ``pid`` has mapped (from /proc; empty elsewhere)."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            found = {line.split(None, 5)[-1].strip() for line in maps if _REGION_PREFIX in line}
    except OSError:
        return set()
    return {Path(path.removesuffix(" (deleted)")) for path in found}


def _terminate(process: subprocess.Popen, exit_timeout_s: int, regions: set[Path]) -> None:
    """SIGTERM the server by its pid, wait for it, SIGKILL if it hangs; then unlink the Python backend's
    shared-memory regions it left: a server that is killed, or whose exit timeout ends before its backend stubs
    have shut down (1-2 s measured here), leaves them in /dev/shm (1 MB or more each, one per model instance)."""
    if process.poll() is None:
        regions |= _backend_regions(process.pid)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=exit_timeout_s + 10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for region in regions:  # named by a random UUID per server: only this server's
        region.unlink(missing_ok=True)


def _ends_with_its_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGTERM the server when this process ends, however it ends.

    The server runs in its own session, and a process killed by a signal (SIGKILL, an unhandled SIGTERM,
    ``os._exit``) runs no finalizer: without this, ``tritonserver`` and its backend stubs would outlive it.
    Linux's ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child ends, so it is set only when
    starting from the main thread, whose end is the process's; elsewhere, or where ``prctl`` is missing, None
    (the finalizer and :meth:`TritonServer.stop` are then the only ways the server is stopped).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None).prctl  # resolved here, not between fork and exec
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_parent_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent ended before the signal was armed
            os._exit(1)

    return set_parent_death_signal


def _python_version(python: Path) -> str:
    done = subprocess.run(
        [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise ServerStartError(f"{python}: does not run ({done.stderr.strip()[-200:]})")
    return done.stdout.strip()
