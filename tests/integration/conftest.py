"""Fixtures of the integration tests: every registered model (in its declared test configuration, at D = 12)
exported by milsdk.export into a Triton repository (the Python-backend variant, which the pip-installed server
can run), their eager references, real servers. A new model is served and checked here without an edit."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from milsdk.export import DeploymentModule, read_model_info, write_triton_model
from milsdk.models import get_model_class, list_models
from milsdk.serving import TritonServer
from milsdk.utils.graph import coords_graph

#: feature width: the contract suite's, so that the artifacts it verifies are the ones served here
D = 12
#: Triton model name -> registered model name. Each model is served with its largest declared class count.
MODEL_NAMES = {name.lower(): name for name in list_models()}


@pytest.fixture(scope="session")
def feature_dim() -> int:
    """D of every served model and bag."""
    return D


@pytest.fixture(scope="session")
def registry_onnx(registered_export) -> dict[str, tuple[torch.nn.Module, Path]]:
    """{Triton model name: (eager model, its model.onnx)}, exported once per session."""
    return {served: registered_export(name, max(get_model_class(name).test_n_classes), "onnx", D)
            for served, name in MODEL_NAMES.items()}


@pytest.fixture(scope="session")
def eager_models(registry_onnx) -> dict[str, torch.nn.Module]:
    return {served: model for served, (model, _) in registry_onnx.items()}


@pytest.fixture(scope="session")
def triton_repo(registry_onnx, tmp_path_factory):
    """A model repository with every registered model, Python backend (model.py running model.onnx)."""
    repo = tmp_path_factory.mktemp("triton") / "model_repository"
    for name, (_, onnx_path) in registry_onnx.items():
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
def served_bags(eval_bags) -> list[dict[str, np.ndarray]]:
    """The evaluation bags as the client takes them from feature files: features (N, D) and grid coords (N, 2)
    (models that do not use positions ignore them)."""
    rng = np.random.default_rng(7)
    bags = []
    for features in eval_bags:
        n = len(features)
        side = int(np.ceil(np.sqrt(n)))
        cells = rng.permutation(side * side)[:n]
        coords = np.stack([cells // side, cells % side], axis=1).astype(np.float32)
        bags.append({"features": features, "coords": coords})
    return bags


@pytest.fixture(scope="session")
def eager_outputs(eager_models, served_bags):
    """{model name: [(logits (C,), attention (N,)) of each bag run alone in eager PyTorch]}; graph models get the
    8-neighbour graph of the bag's coords, which the client builds when a bag has no edges."""
    out = {}
    graphs = [coords_graph(bag["coords"]) for bag in served_bags]
    for name, model in eager_models.items():
        module = DeploymentModule(model)
        rows = []
        with torch.no_grad():
            for bag, (edge_index, edge_weight) in zip(served_bags, graphs):
                arrays = {**bag, "edge_index": edge_index, "edge_weight": edge_weight}
                inputs = {key: torch.from_numpy(value)[None] for key, value in arrays.items()}
                inputs["mask"] = torch.ones(inputs["features"].shape[:2], dtype=torch.bool)
                logits, attention = module(*[inputs[key] for key in module.input_names])
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


@pytest.fixture(scope="module")
def abmil_server(registry_onnx, tmp_path_factory):
    """A real Triton server with ABMIL alone (the Python-backend variant), for tests that need one served model
    and not the whole registry."""
    root = tmp_path_factory.mktemp("triton_abmil")
    onnx_path = registry_onnx["abmil"][1]
    write_triton_model(root / "model_repository", "abmil", {"onnx": onnx_path}, read_model_info(onnx_path),
                       backend="python")
    with TritonServer(root / "model_repository", exit_timeout_s=2) as server:
        yield server
