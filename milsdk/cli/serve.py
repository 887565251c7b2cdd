"""``milsdk serve``: run a real Triton Inference Server on a model repository until Ctrl-C / SIGTERM.

A thin layer over :class:`milsdk.serving.TritonServer`.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import click


class _Stop(Exception):
    """SIGTERM received."""


@click.command("serve")
@click.argument("repository", type=click.Path(path_type=Path))
@click.option("--http-port", default=0, show_default=True, help="HTTP/REST port (0 = a free port).")
@click.option("--grpc-port", default=0, show_default=True, help="gRPC port (0 = a free port).")
@click.option("--metrics-port", default=0, show_default=True, help="Prometheus metrics port (0 = a free port).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 serves other hosts).")
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
    metrics_port: int,
    host: str,
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

    \b
    Examples:
      milsdk serve model_repository
      milsdk serve model_repository --http-port 8000 --grpc-port 8001 --metrics-port 8002
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
    )

    def on_sigterm(signum: int, frame: object) -> None:
        raise _Stop()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        click.echo(f"starting Triton on {repository} ...", err=True)
        server.start()
        click.echo(
            f"Triton is ready (pid {server.pid}), models: {', '.join(server.loaded_models)}\n"
            f"  HTTP     {server.http_url}\n"
            f"  gRPC     {server.grpc_url}\n"
            f"  metrics  {server.metrics_url}\n"
            f"  log      {server.log_file}\n"
            "Ctrl-C to stop."
        )
        code = server.wait()
        raise click.ClickException(f"Triton exited by itself with code {code}: {server.log_tail()}")
    except (KeyboardInterrupt, _Stop):
        click.echo("stopping Triton ...", err=True)
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
    click.echo("Triton stopped.", err=True)
