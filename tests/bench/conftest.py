"""Fixtures of the benchmark-suite tests: one tiny ABMIL exported to ONNX."""

from __future__ import annotations

import pytest
import torch

from milsdk.export import export_onnx
from milsdk.models import ABMIL

D = 16


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    return export_onnx(ABMIL(in_shape=(D,), att_dim=8).eval(), tmp_path_factory.mktemp("bench") / "abmil.onnx")
