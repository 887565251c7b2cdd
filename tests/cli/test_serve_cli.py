"""``milsdk serve`` starts a real Triton server, prints its endpoints, and stops cleanly on SIGTERM / Ctrl-C."""

import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from milsdk.cli import main
from milsdk.errors import ServerStartError
from milsdk.export import export_onnx, read_model_info, write_triton_model
from milsdk.models import ABMIL
from milsdk.serving import triton_server

pytestmark = pytest.mark.integration
D = 16


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("serve_cli")
    onnx_path = export_onnx(ABMIL(in_shape=(D,), att_dim=8).eval(), root / "abmil.onnx")
    return write_triton_model(root / "model_repository", "abmil", {"onnx": onnx_path}, read_model_info(onnx_path),
                              backend="python").parent


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_serve(repo, *args):
    """Run `milsdk serve` in a subprocess; return it and its stdout up to the ready banner."""
    process = subprocess.Popen(
        [sys.executable, "-c", "from milsdk.cli import main; main()", "serve", str(repo), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a test run started in the background (``cmd &`` in a non-interactive shell) hands its children SIGINT
        # ignored, and the SIGINT case would then wait forever: give the server the default disposition back
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Ctrl-C to stop"):
            return process, "".join(lines)
    process.kill()
    raise AssertionError(f"milsdk serve did not become ready: {''.join(lines)} {process.stderr.read()}")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_prints_endpoints_serves_and_stops_cleanly(repo, tmp_path, stop_signal):
    http, grpc, metrics = free_ports(3)
    process, banner = start_serve(repo, "--http-port", http, "--grpc-port", grpc, "--metrics-port", metrics,
                                  "--exit-timeout-secs", 1)
    try:
        assert f"HTTP     http://127.0.0.1:{http}" in banner
        assert f"gRPC     grpc://127.0.0.1:{grpc}" in banner
        assert f"metrics  http://127.0.0.1:{metrics}/metrics" in banner
        assert "models: abmil" in banner
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=5) as response:
            assert response.status == 200
        bag = tmp_path / "bag.npy"
        np.save(bag, np.random.default_rng(0).normal(size=(12, D)).astype(np.float32))
        result = CliRunner().invoke(main, ["predict", f"grpc://127.0.0.1:{grpc}", str(bag), "--model-name", "abmil",
                                           "--out", str(tmp_path / "p.csv"), "--no-progress"])
        assert result.exit_code == 0, result.output
    finally:
        started = time.monotonic()
        process.send_signal(stop_signal)
        code = process.wait(timeout=60)
    assert code == 0
    assert time.monotonic() - started < 10
    assert "Triton stopped." in process.stderr.read()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/live", timeout=2)


def test_port_taken_is_one_line_naming_the_port(repo):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", str(repo), "--grpc-port", str(port)])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: grpc port {port} on 127.0.0.1 is already in use; pick another or omit it"
    )


def test_missing_repository_and_binary(repo, tmp_path):
    result = CliRunner().invoke(main, ["serve", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "model repository not found" in result.stderr
    result = CliRunner().invoke(main, ["serve", str(repo), "--tritonserver", str(tmp_path / "tritonserver")])
    assert result.exit_code == 1 and "not an executable tritonserver" in result.stderr


def test_no_server_binary_anywhere_says_how_to_get_one(monkeypatch):
    monkeypatch.setattr(triton_server.shutil, "which", lambda name: None)
    monkeypatch.setattr(triton_server.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ServerStartError, match="no tritonserver found: not on PATH and no nvidia-pytriton wheel"):
        triton_server.find_tritonserver()


def test_help_has_an_example():
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0 and "milsdk serve model_repository" in result.output
    assert "MILSDK_TRITON_PYTHON" in result.output


def test_readme_serve_commands_fix_every_port_the_readme_then_calls():
    """A port left at 0 is a random one: a README command followed by `predict grpc://127.0.0.1:8001` must
    have asked for 8001."""
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    serve_lines = [line.strip() for line in readme.splitlines() if line.strip().startswith("milsdk serve ")]
    assert serve_lines
    for line in serve_lines:
        if "--http-port" in line:
            assert "--grpc-port 8001" in line, line
