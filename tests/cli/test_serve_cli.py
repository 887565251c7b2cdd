"""``milsdk serve`` starts a real Triton server, prints its endpoints, and stops cleanly on SIGTERM / Ctrl-C."""

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

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
    # and an onnxruntime-backend model, which the pip-installed server (Python backend only) cannot load
    write_triton_model(root / "model_repository", "abmil_ort", {"onnx": onnx_path}, read_model_info(onnx_path))
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
        # started as `milsdk serve ... &` from a script is: SIGINT ignored (non-interactive shells do that to
        # background jobs); serve installs its own SIGINT handler, so the SIGINT case still stops it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
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


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [part.decode() for part in f.read().split(b"\0") if part]


def test_serve_is_hardened_by_default(repo, tmp_path):
    """Defaults, checked on the running tritonserver's own command line and by calling it: loopback, model
    control mode none, no metrics, the admin APIs behind a printed key, shared memory open on loopback (README's
    `milsdk serve` + `milsdk predict --shared-memory` needs no key)."""
    import tritonclient.http
    from tritonclient.utils import InferenceServerException

    http, grpc = free_ports(2)
    process, banner = start_serve(repo, "--http-port", http, "--grpc-port", grpc, "--exit-timeout-secs", 1)
    try:
        pid = int(re.search(r"Triton is ready \(pid (\d+)\)", banner).group(1))
        key = re.search(r"key      (\S+) \(header milsdk-api-key", banner).group(1)
        flags = _cmdline(pid)[1:]
        rule = f"model-repository,trace,logging:milsdk-api-key={key}"
        for flag in ["--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--model-control-mode=none",
                     "--allow-metrics=false", f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]:
            assert flag in flags, (flag, flags)
        assert not any(f.startswith(("--load-model", "--metrics-port")) for f in flags)
        # mode none loads every model it finds: the server gets a folder holding only the models it can run
        served = Path(next(f for f in flags if f.startswith("--model-repository=")).split("=", 1)[1])
        assert served != repo and [p.name for p in served.iterdir()] == ["abmil"]
        assert (served / "abmil").resolve() == (repo / "abmil").resolve()
        assert "metrics  off" in banner and "control mode none" in banner

        admin = tritonclient.http.InferenceServerClient(f"127.0.0.1:{http}")
        try:
            with pytest.raises(InferenceServerException, match="restricted, expecting header 'milsdk-api-key'"):
                admin.get_model_repository_index()
            with pytest.raises(InferenceServerException, match="restricted"):
                admin.update_log_settings({"log_verbose_level": 1})
            assert [m["name"] for m in admin.get_model_repository_index(headers={"milsdk-api-key": key})] == [
                "abmil"
            ]
            with pytest.raises(InferenceServerException, match="explicit model load / unload is not allowed"):
                admin.unload_model("abmil", headers={"milsdk-api-key": key})
            assert admin.is_model_ready("abmil")
        finally:
            admin.close()
        import tritonclient.grpc

        admin = tritonclient.grpc.InferenceServerClient(f"127.0.0.1:{grpc}")
        try:
            with pytest.raises(InferenceServerException, match="expecting header 'triton-grpc-protocol-milsdk-api"):
                admin.get_model_repository_index()
            index = admin.get_model_repository_index(headers={"triton-grpc-protocol-milsdk-api-key": key}, as_json=True)
            assert [m["name"] for m in index["models"]] == ["abmil"]
        finally:
            admin.close()
        bag = tmp_path / "bag.npy"
        np.save(bag, np.random.default_rng(0).normal(size=(12, D)).astype(np.float32))
        result = CliRunner().invoke(main, ["predict", f"grpc://127.0.0.1:{grpc}", str(bag), "--model-name", "abmil",
                                           "--shared-memory", "--out", str(tmp_path / "p.csv"), "--no-progress"])
        assert result.exit_code == 0, result.output
        assert (tmp_path / "p.csv").read_text().count("\n") == 2
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def test_shared_memory_needs_the_key_when_serving_other_hosts():
    from milsdk.cli.serve import restricted_apis

    assert restricted_apis("127.0.0.1", unrestricted=False) == ["model-repository", "trace", "logging"]
    assert restricted_apis("localhost", unrestricted=False) == ["model-repository", "trace", "logging"]
    assert restricted_apis("0.0.0.0", unrestricted=False) == ["model-repository", "trace", "logging", "shared-memory"]
    assert restricted_apis("10.1.2.3", unrestricted=False)[-1] == "shared-memory"
    assert restricted_apis("0.0.0.0", unrestricted=True) == []


def test_a_bad_api_key_is_one_line_before_anything_starts(repo, monkeypatch):
    monkeypatch.delenv("MILSDK_TRITON_API_KEY", raising=False)
    result = CliRunner().invoke(main, ["serve", str(repo), "--api-key", "a,b:c=d"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "Error: api_key must be at least 8 characters of letters, digits and _ . ~ + / -"
    ]


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
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    serve_lines = [line.strip() for line in readme.splitlines() if line.strip().startswith("milsdk serve ")]
    assert serve_lines
    for line in serve_lines:
        if "--http-port" in line:
            assert "--grpc-port 8001" in line, line
