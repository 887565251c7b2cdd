"""Fixtures of the export tests: ABMIL at D=1024 (binary and 3-class) exported once per session, checkpoints,
and small hand-written models that exercise the wrapper (scriptable, with coords, with a graph, leaking
padding)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from milsdk.export.onnx import export_onnx
from milsdk.export.torchscript import export_torchscript
from milsdk.models import ABMIL, MILModel
from milsdk.nn.adjacency import propagate, resolve_edges
from milsdk.utils.checkpoint import save_checkpoint

D = 1024
CLASS_NAMES = {1: ["normal", "tumor"], 3: ["benign", "in situ", "invasive"]}


@pytest.fixture(scope="session")
def abmil() -> dict[int, ABMIL]:
    """{n_classes: ABMIL(in_shape=(1024,))} for 1 (binary) and 3 classes, eval mode, fixed seed."""
    torch.manual_seed(0)
    return {c: ABMIL(in_shape=(D,), n_classes=c).eval() for c in (1, 3)}


@pytest.fixture(scope="session")
def abmil_artifacts(abmil, tmp_path_factory) -> dict[tuple[int, str], Path]:
    """{(n_classes, "onnx" | "torchscript"): path}, exported once for the session."""
    out = tmp_path_factory.mktemp("abmil_artifacts")
    paths = {}
    for c, model in abmil.items():
        paths[(c, "onnx")] = export_onnx(model, out / f"abmil{c}.onnx")
        paths[(c, "torchscript")] = export_torchscript(model, out / f"abmil{c}.pt")
    return paths


@pytest.fixture(scope="session")
def abmil_ckpt(abmil, tmp_path_factory) -> dict[int, Path]:
    """{n_classes: checkpoint path} with class names and a feature-extractor name in the metadata."""
    out = tmp_path_factory.mktemp("ckpt")
    return {
        c: save_checkpoint(m, out / f"abmil{c}.ckpt", class_names=CLASS_NAMES[c], feature_extractor="UNI")
        for c, m in abmil.items()
    }


class ScriptableToy(MILModel):
    """A tiny attention-pooling model written in TorchScript-compatible style (D = 8)."""

    __jit_unused_properties__ = ("config", "in_shape", "n_outputs")

    def __init__(self, in_shape=(8,), n_classes: int = 1) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.att = torch.nn.Linear(in_shape[0], 1)
        self.cls = torch.nn.Linear(in_shape[0], n_classes)

    def _pool(self, X: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.att(X).squeeze(-1)
        w = torch.softmax(a.masked_fill(~mask, -1e4), 1) * mask.float()
        logits = self.cls((w.unsqueeze(-1) * X).sum(1))
        if self.n_classes == 1:
            logits = logits.squeeze(-1)
        return logits, a

    def forward(
        self, X: torch.Tensor, mask: torch.Tensor | None = None, return_att: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert mask is not None
        return self._pool(X, mask)

    def deployment_attention(self, att: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        assert mask is not None
        w = torch.exp(att - att.masked_fill(~mask, -1e4).amax(1, keepdim=True)) * mask.float()
        return w / w.sum(1, keepdim=True).clamp_min(1e-30)


class CoordsToy(ScriptableToy):
    """A toy that also takes instance coordinates (extra_inputs = ("coords",))."""

    extra_inputs = ("coords",)

    def forward(
        self,
        X: torch.Tensor,
        mask: torch.Tensor | None = None,
        coords: torch.Tensor | None = None,
        return_att: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert mask is not None and coords is not None
        return self._pool(X + 0.01 * coords.sum(-1, keepdim=True), mask)


class GraphToy(ScriptableToy):
    """A toy graph model (extra_inputs = ("adj",)): one propagation step over the bag's edges, then pooling."""

    extra_inputs = ("adj",)

    def forward(
        self,
        X: torch.Tensor,
        adj: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        return_att: bool = False,
        edge_index: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert mask is not None
        edge_index, edge_weight = resolve_edges(X, adj, edge_index, edge_weight, mask)
        return self._pool(X + propagate(X, edge_index, edge_weight), mask)


class LeakyPaddingABMIL(ABMIL):
    """ABMIL whose logits also see the padded positions (mean over all N): NOT padding-invariant, but claims
    to be."""

    def forward(self, X, mask=None, return_att=False):
        logits, f = super().forward(X, mask, return_att=True)
        logits = logits + X.mean(dim=(1, 2)).reshape(logits.shape[0], *([1] * (logits.dim() - 1)))
        return (logits, f) if return_att else logits


class DeclaredLeakyABMIL(LeakyPaddingABMIL):
    """The same model, honest about it."""

    padding_invariant = False
    padding_note = "adds the mean of all padded features to the logits"


@pytest.fixture
def toys():
    """Classes of the hand-written test models."""
    return {
        "scriptable": ScriptableToy,
        "coords": CoordsToy,
        "graph": GraphToy,
        "leaky": LeakyPaddingABMIL,
        "declared": DeclaredLeakyABMIL,
    }
