"""Fixtures of the integration tests: real ABMIL and TransMIL exported by milsdk.export into a Triton repository
(the Python-backend variant, which the pip-installed server can run), their eager references, real servers."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from milsdk.export import DeploymentModule, export_onnx, read_model_info, write_triton_model
from milsdk.models import ABMIL, TransMIL
from milsdk.serving import TritonServer

D = 64
MODELS = {
    "abmil": lambda: ABMIL(in_shape=(D,), att_dim=32),
    "transmil": lambda: TransMIL(in_shape=(D,), att_dim=32, n_heads=2, n_landmarks=16, n_classes=3),
}


@pytest.fixture(scope="session")
def eager_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: make().eval() for name, make in MODELS.items()}


@pytest.fixture(scope="session")
def triton_repo(eager_models, tmp_path_factory):
    """A model repository with abmil and transmil, Python backend (model.py running model.onnx)."""
    root = tmp_path_factory.mktemp("triton")
    repo = root / "model_repository"
    for name, model in eager_models.items():
        onnx_path = export_onnx(model, root / f"{name}.onnx")
        write_triton_model(repo, name, {"onnx": onnx_path}, read_model_info(onnx_path), backend="python")
    return repo


@pytest.fixture(scope="session")
def eval_bags() -> list[np.ndarray]:
    """50 bags of 1 to 5,000 instances (log-uniform sizes, both ends included), float32 (N, D)."""
    rng = np.random.default_rng(42)
    sizes = np.unique(np.round(np.exp(rng.uniform(0, np.log(5000), size=200))).astype(int))
    inner = rng.choice(sizes[(sizes > 1) & (sizes < 5000)], 48, replace=False)
    sizes = rng.permutation(np.concatenate([[1, 5000], inner]))
    return [rng.normal(size=(int(n), D)).astype(np.float32) for n in sizes]


@pytest.fixture(scope="session")
def eager_outputs(eager_models, eval_bags):
    """{model name: [(logits (C,), attention (N,)) of each bag run alone in eager PyTorch]}."""
    out = {}
    for name, model in eager_models.items():
        module = DeploymentModule(model)
        rows = []
        with torch.no_grad():
            for bag in eval_bags:
                x = torch.from_numpy(bag)[None]
                logits, attention = module(x, torch.ones(x.shape[:2], dtype=torch.bool))
                rows.append((logits[0].numpy(), attention[0].numpy()))
        out[name] = rows
    return out


@pytest.fixture(scope="module")
def triton_server(triton_repo):
    """One real Triton server on free loopback ports for a test module."""
    with TritonServer(triton_repo, exit_timeout_s=2) as server:
        yield server


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
