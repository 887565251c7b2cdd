"""The deployment assets in serving/: the pip script really starts a server; the container command and the
Kubernetes manifest are checked against each other and against the operator guide (no Docker or cluster here)."""

import importlib.util
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from milsdk.cli.serve import restricted_apis
from milsdk.serving import MILClient

pytestmark = pytest.mark.integration

SERVING = Path(__file__).resolve().parents[2] / "serving"
PORTS = {8000, 8001, 8002}


# -- a YAML reader for the subset Kubernetes manifests use (PyYAML is not a dependency) -------------------------
def _yaml_lines(text):
    lines = []
    for raw in text.splitlines():
        assert "\t" not in raw, f"tab in YAML line {raw!r}"
        if not raw.strip() or raw.strip().startswith("#"):
            continue
        line = re.sub(r"\s+#.*$", "", raw)
        indent, body = len(line) - len(line.lstrip()), line.strip()
        while body.startswith("- "):  # "- key: v" is an item whose mapping starts two columns deeper
            lines.append((indent, "-"))
            indent, body = indent + 2, body[2:].strip()
        lines.append((indent, body))
    return lines


def _scalar(text):
    if text[:1] in "\"'":
        return text[1:-1]
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return {"true": True, "false": False, "null": None}.get(text, text)


def _is_key(body):
    return body[:1] not in "\"'" and re.match(r"[^:]+:(\s|$)", body) is not None


def _block(lines, i):
    indent, body = lines[i]
    if body == "-":
        items = []
        while i < len(lines) and lines[i] == (indent, "-"):
            item, i = _block(lines, i + 1)
            items.append(item)
        return items, i
    if not _is_key(body):  # YAML: a key ends at ": " or a final ":", so "a:b" and quoted text are scalars
        return _scalar(body), i + 1
    mapping = {}
    while i < len(lines) and lines[i][0] == indent and lines[i][1] != "-":
        assert _is_key(lines[i][1]), f"a scalar among the keys of a mapping: {lines[i][1]!r}"
        key, _, rest = lines[i][1].partition(":")
        assert key not in mapping, f"duplicate key {key!r}"
        if rest.strip():
            mapping[key], i = _scalar(rest.strip()), i + 1
        elif i + 1 < len(lines) and (lines[i + 1][0] > indent or lines[i + 1] == (indent, "-")):
            mapping[key], i = _block(lines, i + 1)
        else:
            mapping[key], i = None, i + 1
    assert i == len(lines) or lines[i][0] < indent, f"bad indentation near {lines[i]}"
    return mapping, i


def load_manifests(text):
    documents = []
    for part in re.split(r"^---\s*$", text, flags=re.MULTILINE):
        lines = _yaml_lines(part)
        if lines:
            document, end = _block(lines, 0)
            assert end == len(lines), f"unparsed YAML from {lines[end]}"
            documents.append(document)
    return documents


# -- tests -------------------------------------------------------------------------------------------------------
def test_kubernetes_manifest_has_deployment_service_and_health_probes():
    text = (SERVING / "k8s" / "triton-deployment.yaml").read_text()
    documents = load_manifests(text)
    if importlib.util.find_spec("yaml") is not None:  # where PyYAML exists, it must read the same
        import yaml

        assert list(yaml.safe_load_all(text)) == documents
    deployment, service = documents
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert container["args"][:2] == ["tritonserver", "--model-repository=/models"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/models"}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # hardened as `milsdk serve` is for other hosts: non-root, read-only root, the admin APIs behind the key
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/tmp", "/dev/shm"}
    apis = ",".join(restricted_apis("0.0.0.0", unrestricted=False))
    assert "--model-control-mode=none" in container["args"]
    for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
        assert f"{flag}={apis}:milsdk-api-key=$(MILSDK_TRITON_API_KEY)" in container["args"]
    key = next(e for e in container["env"] if e["name"] == "MILSDK_TRITON_API_KEY")
    assert key["valueFrom"]["secretKeyRef"]["name"] in text.split("kubectl create secret generic ", 1)[1]
    assert deployment["spec"]["selector"]["matchLabels"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert {(p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        (8000, "http"), (8001, "grpc"), (8002, "metrics")}


def test_the_yaml_reader_rejects_what_it_cannot_read():
    with pytest.raises(AssertionError):
        load_manifests("a:\n  b: 1\n c: 2\n")
    assert load_manifests("a:\n- x\n- y: 1\n  z: two\n") == [{"a": ["x", {"y": 1, "z": "two"}]}]
    assert load_manifests("a:\n- --f=x:k=v\n- 'q: r'\n") == [{"a": ["--f=x:k=v", "q: r"]}]


def test_container_command_uses_the_documented_ports_repository_and_image(tmp_path):
    repo = tmp_path / "model_repository"
    repo.mkdir()
    assert subprocess.run(["bash", "-n", SERVING / "triton_container.sh"]).returncode == 0
    done = subprocess.run(
        ["bash", SERVING / "triton_container.sh", str(repo)], capture_output=True, text=True,
        env={**os.environ, "DRY_RUN": "1"},
    )
    assert done.returncode == 0, done.stderr
    command = shlex.split(done.stdout)
    assert command[:2] == ["docker", "run"] and "--gpus" in command
    published = [command[i + 1] for i, arg in enumerate(command) if arg == "-p"]
    assert published == ["8000:8000", "8001:8001", "8002:8002"]
    assert f"{repo}:/models:ro" in command
    image = next(arg for arg in command if arg.startswith("nvcr.io/nvidia/tritonserver:"))
    assert command[command.index(image) + 1 :][:2] == ["tritonserver", "--model-repository=/models"]
    assert "--model-control-mode=none" in command
    key = re.search(r"header milsdk-api-key\): (\w{48})$", done.stderr.strip()).group(1)
    apis = ",".join(restricted_apis("0.0.0.0", unrestricted=False))
    assert f"--http-restricted-api={apis}:milsdk-api-key={key}" in command
    assert f"--grpc-restricted-protocol={apis}:milsdk-api-key={key}" in command

    manifest = (SERVING / "k8s" / "triton-deployment.yaml").read_text()
    readme = (SERVING / "README.md").read_text()
    assert f"image: {image}" in manifest and image in readme
    assert all(f"**{port}**" in readme for port in PORTS) and "**/models**" in readme


def test_pip_script_starts_a_real_server_and_stops_on_sigterm(triton_repo, eval_bags):
    socks = [socket.socket() for _ in range(3)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    http, grpc, metrics = (s.getsockname()[1] for s in socks)
    for s in socks:
        s.close()
    env = {**os.environ, "HTTP_PORT": str(http), "GRPC_PORT": str(grpc), "METRICS_PORT": str(metrics),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    process = subprocess.Popen(["bash", SERVING / "triton_pip.sh", str(triton_repo)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        banner = ""
        deadline = time.monotonic() + 120
        while "Ctrl-C to stop" not in banner and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            banner += line
        assert f"http://127.0.0.1:{http}" in banner, banner + process.stderr.read()
        with MILClient.from_triton(f"grpc://127.0.0.1:{grpc}", "abmil") as client:
            preds = client.predict(eval_bags[:3])
        assert all(p.ok for p in preds)
    finally:
        process.send_signal(signal.SIGTERM)  # the script exec's milsdk serve, so the signal reaches it
        code = process.wait(timeout=60)
    assert code == 0
    assert "Triton stopped." in process.stderr.read()
    assert np.isfinite(preds[0].logits).all()
