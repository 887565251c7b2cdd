"""``milsdk serve``: run a real Triton Inference Server on a model repository until Ctrl-C / SIGTERM.

A thin layer over :class:`milsdk.serving.TritonServer`, hardened by default: loopback only, model control mode
``none``, no metrics endpoint unless ``--metrics-port`` is given, and the administrative APIs (model repository,
trace, logging; shared memory too when serving other hosts) behind a key (:func:`restricted_apis`).
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from milsdk.serving import TritonServer


class _Stop(Exception):
    """SIGTERM or SIGINT received."""


#: API groups that need the key by default: they change what the server runs or writes (load / unload models,
#: trace and log settings), not what a client of a model needs.
ADMIN_APIS = ("model-repository", "trace", "logging")


def restricted_apis(host: str, unrestricted: bool) -> list[str]:
    """The Triton API groups ``milsdk serve`` puts behind its key.

    Shared memory is open on loopback: only this host can reach the server then, and shared memory is for a
    client on the same host (``milsdk predict --shared-memory`` works with no key); served to other hosts, a
    client could make the server map this host's shared-memory segments, so it needs the key.
    """
    if unrestricted:
        return []
    return [*ADMIN_APIS, *([] if _is_loopback(host) else ["shared-memory"])]


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@click.command("serve")
@click.argument("repository", type=click.Path(path_type=Path))
@click.option("--http-port", default=0, show_default=True, help="HTTP/REST port (0 = a free port).")
@click.option("--grpc-port", default=0, show_default=True, help="gRPC port (0 = a free port).")
@click.option(
    "--metrics-port", type=int, default=None,
    help="Serve Prometheus metrics on this port (0 = a free port) [default: no metrics endpoint].",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 serves other hosts).")
@click.option(
    "--model-control-mode", type=click.Choice(["none", "explicit"]), default="none", show_default=True,
    help="none: the models are loaded at start and stay; explicit: clients with the key may load / unload them.",
)
@click.option(
    "--api-key", envvar="MILSDK_TRITON_API_KEY", show_envvar=True,
    help="Key of the restricted APIs, sent by clients as the header milsdk-api-key [default: a random one, printed].",
)
@click.option(
    "--unrestricted", is_flag=True,
    help="Put no API behind the key (model repository, trace, logging, shared memory): trusted networks only.",
)
@click.option("--model", "models", multiple=True, help="Load only this model (repeatable; default: every model).")
@click.option(
    "--backend-python", type=click.Path(path_type=Path),
    help="Server-side Python environment (folder or python) for the Python backend; needs numpy<2 + onnxruntime. "
    "Default: $MILSDK_TRITON_PYTHON, else a managed one in ~/.cache/milsdk/triton-python-env (made on first use).",
)
@click.option(
    "--tritonserver", type=click.Path(path_type=Path),
    help="The server binary (default: the one on PATH, then the nvidia-pytriton wheel's).",
)
@click.option("--exit-timeout-secs", default=5, show_default=True, help="Wait for in-flight requests when stopping.")
@click.option("--startup-timeout", default=120.0, show_default=True, help="Seconds to wait for every model.")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), help="Server log [a temporary file].")
def serve(
    repository: Path,
    http_port: int,
    grpc_port: int,
    metrics_port: int | None,
    host: str,
    model_control_mode: str,
    api_key: str | None,
    unrestricted: bool,
    models: tuple[str, ...],
    backend_python: Path | None,
    tritonserver: Path | None,
    exit_timeout_secs: int,
    startup_timeout: float,
    log_file: Path | None,
) -> None:
    """Serve REPOSITORY (written by `milsdk export --triton`) with Triton until Ctrl-C or SIGTERM.

    Uses the `tritonserver` on PATH (e.g. inside NVIDIA's container) or the one in the nvidia-pytriton wheel
    (CPU, Python backend only: it loads the repository's Python-backend models). Waits until every model is
    ready, prints the endpoints, and stops the server cleanly.

    Hardened by default: loopback only; the models loaded at start cannot be unloaded or replaced
    (--model-control-mode none); no metrics endpoint; the model-repository, trace and logging APIs (and shared
    memory when --host serves other hosts) answer only requests with the header `milsdk-api-key: KEY` (the key is
    printed; clients read it from $MILSDK_TRITON_API_KEY).

    \b
    Examples:
      milsdk serve model_repository
      milsdk serve model_repository --http-port 8000 --grpc-port 8001 --metrics-port 8002
      milsdk serve model_repository --host 0.0.0.0 --model-control-mode explicit --api-key "$KEY"
    """
    from milsdk.serving import TritonServer

    # the launcher's notes (creating the server-side Python, models it skips) are for the operator
    logger = logging.getLogger("milsdk.serving")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    server = TritonServer(
        repository, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, host=host,
        models=list(models) or None, binary=tritonserver, backend_python=backend_python,
        exit_timeout_s=exit_timeout_secs, startup_timeout_s=startup_timeout, log_path=log_file,
        model_control_mode=model_control_mode, restricted_apis=restricted_apis(host, unrestricted),
        api_key=api_key,
    )

    def on_stop_signal(signum: int, frame: object) -> None:
        raise _Stop()

    # SIGINT too, explicitly: Python leaves it ignored when the process starts with it ignored, as every
    # `milsdk serve ... &` of a script does (non-interactive shells ignore SIGINT in background jobs), and
    # `kill -INT` would then never stop the server
    previous = {sig: signal.signal(sig, on_stop_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        click.echo(f"starting Triton on {repository} ...", err=True)
        server.start()
        click.echo(
            f"Triton is ready (pid {server.pid}), models: {', '.join(server.loaded_models)}\n"
            f"  HTTP     {server.http_url}\n"
            f"  gRPC     {server.grpc_url}\n"
            f"  metrics  {server.metrics_url or 'off (--metrics-port to serve them)'}\n"
            f"  models   control mode {server.model_control_mode}\n"
            f"  key      {_key_line(server, given=api_key is not None)}\n"
            f"  log      {server.log_file}\n"
            "Ctrl-C to stop."
        )
        code = server.wait()
        raise click.ClickException(f"Triton exited by itself with code {code}: {server.log_tail()}")
    except (KeyboardInterrupt, _Stop):
        click.echo("stopping Triton ...", err=True)
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo("Triton stopped.", err=True)


def _key_line(server: TritonServer, given: bool) -> str:
    """The banner's key line: the key (unless the operator gave it) and what it guards."""
    if not server.restricted_apis:
        return "none: every API is open (--unrestricted)"
    apis = ", ".join(server.restricted_apis)
    shown = "the one given" if given else server.api_key
    return f"{shown} (header milsdk-api-key; clients: export MILSDK_TRITON_API_KEY=...) guards {apis}"
