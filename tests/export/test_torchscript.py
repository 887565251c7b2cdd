"""TorchScript export: script when the model allows it, otherwise a trace that must be right at other sizes;
metadata as an extra file; the forward takes exactly the contract's inputs (Triton's PyTorch backend needs
that)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from milsdk.contract import METADATA_KEY, ModelInfo
from milsdk.errors import ExportError
from milsdk.export.signature import DeploymentModule
from milsdk.export.verify import VerificationPlan, verify_export
from milsdk.export.torchscript import TRACE_CHECK_SIZES, export_torchscript, read_torchscript_info
from milsdk.models import ABMIL, create_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")


def _run_both(model, scripted, B, N, lengths, D=1024):
    gen = torch.Generator().manual_seed(5)
    mask = torch.arange(N)[None] < torch.tensor(lengths)[:, None]
    x = torch.randn(B, N, D, generator=gen) * mask[..., None]
    with torch.no_grad():
        return scripted(x, mask), DeploymentModule(model)(x, mask), mask


@pytest.mark.parametrize("n_classes", [1, 3])
def test_artifact_is_right_at_unseen_sizes(abmil, abmil_artifacts, n_classes):
    scripted = torch.jit.load(str(abmil_artifacts[(n_classes, "torchscript")]))
    assert [a.name for a in scripted.forward.schema.arguments] == ["self", "features", "mask"]
    for B, N, lengths in [(1, 1, [1]), (6, 1234, [1234, 1, 600, 2, 1233, 50]), (3, 3, [3, 3, 3])]:
        (logits, attention), (ref_logits, ref_attention), mask = _run_both(
            abmil[n_classes], scripted, B, N, lengths
        )
        assert logits.shape == (B, n_classes) and attention.shape == (B, N)
        torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(attention, ref_attention, atol=1e-4, rtol=0)
        assert torch.all(attention[~mask] == 0)


@pytest.mark.parametrize("n_classes", [1, 3])
def test_metadata_and_method_are_recorded(abmil, abmil_artifacts, n_classes):
    path = abmil_artifacts[(n_classes, "torchscript")]
    info = read_torchscript_info(path)
    extra = {METADATA_KEY: ""}
    torch.jit.load(str(path), _extra_files=extra)
    assert ModelInfo.from_json(extra[METADATA_KEY]) == info
    export = info.extra["export"]
    assert info.model_name == "ABMIL" and info.n_classes == n_classes and info.feature_dim == 1024
    assert export["format"] == "torchscript" and export["method"] in ("script", "trace")
    if (
        export["method"] == "trace"
    ):  # ABMIL does not script yet: the reason and the sizes checked are recorded
        assert export["script_error"] and export["trace_checked_sizes"] == [
            list(s) for s in TRACE_CHECK_SIZES
        ]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize(
    "kind,inputs",
    [
        ("scriptable", ["features", "mask"]),
        ("coords", ["features", "mask", "coords"]),
        ("graph", ["features", "mask", "edge_index", "edge_weight"]),
    ],
)
def test_scriptable_models_are_scripted(toys, tmp_path, kind, inputs):
    model = toys[kind]().eval()
    path = export_torchscript(model, tmp_path / "toy.pt")
    info = read_torchscript_info(path)
    assert info.extra["export"]["method"] == "script" and "script_error" not in info.extra["export"]
    names = [a.name for a in torch.jit.load(str(path)).forward.schema.arguments][1:]
    assert names == info.inputs == inputs
    assert verify_export(path, model, plan=VerificationPlan.quick()).passed


class FrozenBagABMIL(ABMIL):
    """Unscriptable (Python int() on a shape) and, traced, frozen to the example's bag size."""

    def forward(self, X, mask=None, return_att=False):
        logits, f = super().forward(X, mask, return_att=True)
        n = int(X.shape[1])  # a Python int: the trace bakes in the example's N
        return logits + 0.1 * n, f


def test_a_wrong_trace_is_refused(tmp_path):
    model = FrozenBagABMIL(in_shape=(32,)).eval()
    with pytest.raises(ExportError, match="traced fallback is wrong at other sizes: at batch=1, N=1"):
        export_torchscript(model, tmp_path / "frozen.pt")
    assert list(tmp_path.iterdir()) == []


def test_float16_torchscript(abmil, tmp_path):
    path = export_torchscript(abmil[3], tmp_path / "half.pt", precision="float16")
    scripted = torch.jit.load(str(path))
    (logits, attention), (ref_logits, _), _ = _run_both(abmil[3], scripted, 2, 40, [40, 3])
    assert logits.dtype == attention.dtype == torch.float32
    np.testing.assert_allclose(logits.numpy(), ref_logits.numpy(), atol=1e-2, rtol=1e-2)
    assert read_torchscript_info(path).extra["export"]["precision"] == "float16"


def test_transmil_is_scripted_and_right_at_unseen_sizes(tmp_path):
    torch.manual_seed(0)
    model = create_model("TransMIL", in_shape=(1024,), att_dim=32).eval()
    path = export_torchscript(model, tmp_path / "transmil.pt")
    assert read_torchscript_info(path).extra["export"]["method"] == "script"
    scripted = torch.jit.load(str(path))
    for B, N, lengths in ((1, 1, [1]), (3, 300, [300, 17, 2])):
        (logits, attention), (ref_logits, ref_attention), _ = _run_both(model, scripted, B, N, lengths)
        assert torch.allclose(logits, ref_logits, atol=1e-5)
        assert torch.allclose(attention, ref_attention, atol=1e-5)
