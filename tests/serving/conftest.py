"""Fixtures of the serving tests: small real models exported by milsdk.export, eager references, bag makers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from milsdk.export import DeploymentModule, export_onnx, export_torchscript
from milsdk.models import ABMIL

D = 24


@pytest.fixture(scope="session")
def abmil_model() -> ABMIL:
    torch.manual_seed(0)
    return ABMIL(in_shape=(D,), att_dim=16).eval()


@pytest.fixture(scope="session")
def abmil_onnx(abmil_model, tmp_path_factory):
    return export_onnx(abmil_model, tmp_path_factory.mktemp("abmil") / "model.onnx")


@pytest.fixture(scope="session")
def abmil_pt(abmil_model, tmp_path_factory):
    return export_torchscript(abmil_model, tmp_path_factory.mktemp("abmil_pt") / "model.pt")


@pytest.fixture(scope="session")
def eager(abmil_model):
    """eager(bag (N, D)) -> (logits (C,), attention (N,)) of the model alone in the deployment signature."""
    module = DeploymentModule(abmil_model)

    def run(bag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(np.asarray(bag, dtype=np.float32))[None]
        with torch.no_grad():
            logits, attention = module(x, torch.ones(x.shape[:2], dtype=torch.bool))
        return logits[0].numpy(), attention[0].numpy()

    return run


@pytest.fixture(scope="session")
def make_bags():
    """make_bags(sizes, dim=D, seed=0) -> random float32 bags (N_i, dim)."""

    def make(sizes, dim: int = D, seed: int = 0) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        return [rng.normal(size=(n, dim)).astype(np.float32) for n in sizes]

    return make
