"""verify_export: the full default plan once, and proof that the checks can fail (tampered weights, a frozen
bag
axis, leaking padding), the declared-not-invariant case, and the report's forms."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from milsdk.contract import METADATA_KEY
from milsdk.errors import ArtifactError
from milsdk.export.onnx import export_onnx
from milsdk.export.signature import DeploymentModule, example_inputs, model_info
from milsdk.export.verify import (
    BatchCase,
    PaddingProbe,
    Tolerances,
    VerificationPlan,
    VerificationReport,
    verify_export,
    write_reports,
)

QUICK = VerificationPlan.quick()


@pytest.fixture(scope="module")
def full_report(abmil, abmil_artifacts) -> VerificationReport:
    """The default plan (batch 1..8, bag 1..5000) on the binary ONNX export."""
    return verify_export(abmil_artifacts[(1, "onnx")], abmil[1])


def test_default_plan_covers_the_contract(full_report):
    report = full_report
    assert report.passed, report.summary()
    sizes = {(c["batch"], c["max_instances"]) for c in report.cases}
    assert {b for b, _ in sizes} == set(range(1, 9))
    assert {1, 5000} <= {n for _, n in sizes}
    assert any("," in c["sizes"] for c in report.cases)  # batches with mixed padding
    assert report.example_sizes == [2, 16] and (2, 16) not in sizes
    assert report.parity_error <= 1e-4 and report.padding_error <= 1e-5
    checks = {c.name: c for c in report.checks}
    assert all(
        checks[n].passed
        for n in (
            "metadata",
            "runs",
            "output_shapes",
            "parity_logits",
            "parity_attention",
            "finite",
            "one_instance_bag",
            "attention_normalised",
            "padding_logits",
            "padding_attention",
        )
    )
    assert {"milsdk", "torch", "onnx", "onnxruntime", "numpy", "python"} <= set(report.versions)
    assert report.timings["total_s"] > 0 and all("artifact_ms" in c and "eager_ms" in c for c in report.cases)


def test_report_forms_and_files(full_report, tmp_path):
    data = json.loads(full_report.to_json())
    assert data["passed"] is True and data["tolerances"]["parity_atol"] == 1e-4
    assert data["plan"]["cases"][0] == {"batch": 1, "max_instances": 1, "mixed": False}
    markdown = full_report.to_markdown()
    assert "| parity_logits | pass |" in markdown and "5000" in markdown and "onnxruntime" in markdown
    json_path, md_path = write_reports([full_report], tmp_path)
    assert json.loads(json_path.read_text())["artifacts"][0]["artifact"] == full_report.artifact
    assert md_path.read_text().startswith("# milsdk export verification")


@pytest.mark.parametrize("n_classes", [1, 3])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_every_abmil_artifact_passes_the_quick_plan(abmil, abmil_artifacts, n_classes, fmt):
    report = verify_export(abmil_artifacts[(n_classes, fmt)], abmil[n_classes], plan=QUICK)
    assert report.passed, report.summary()


def test_tampered_weights_fail_parity(abmil, abmil_artifacts, tmp_path):
    proto = onnx.load(abmil_artifacts[(3, "onnx")])
    weight = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
    array = onnx.numpy_helper.to_array(weight).copy()
    array.flat[:50] += 0.05
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    onnx.save(proto, tmp_path / "tampered.onnx")
    report = verify_export(tmp_path / "tampered.onnx", abmil[3], plan=QUICK)
    assert not report.passed
    assert report.check("parity_logits").passed is False or report.check("parity_attention").passed is False
    assert report.parity_error > 1e-4 and "FAILED parity" in report.summary()


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_frozen_bag_axis_fails(abmil, tmp_path):
    """A static export (no dynamic shapes) with valid metadata: it runs only at the example size."""
    module = DeploymentModule(abmil[1])
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            example_inputs(module, 2, 16),
            dynamo=True,
            verbose=False,
            report=False,
            input_names=module.input_names,
            output_names=["logits", "attention"],
        )
    proto = program.model_proto
    proto.metadata_props.add(key=METADATA_KEY, value=model_info(abmil[1]).to_json())
    onnx.save(proto, tmp_path / "frozen.onnx")
    report = verify_export(tmp_path / "frozen.onnx", abmil[1], plan=QUICK)
    assert not report.passed and report.check("runs").passed is False
    assert report.errors and "batch=1 N=1" in report.errors[0]


def test_leaking_padding_fails_padding_invariance(toys, tmp_path):
    torch.manual_seed(0)
    model = toys["leaky"](in_shape=(64,)).eval()
    report = verify_export(export_onnx(model, tmp_path / "leaky.onnx"), model, plan=QUICK)
    assert report.check("parity_logits").passed  # the export is faithful ...
    assert report.check("padding_logits").passed is False  # ... to a model that is not padding-invariant
    assert report.padding_error > 1e-5 and not report.passed


def test_declared_not_invariant_is_reported_not_failed(toys, tmp_path):
    torch.manual_seed(0)
    model = toys["declared"](in_shape=(64,)).eval()
    report = verify_export(export_onnx(model, tmp_path / "declared.onnx"), model, plan=QUICK)
    check = report.check("padding_logits")
    assert check.passed is None and check.detail.startswith("declared not invariant: adds the mean")
    assert check.value > 1e-5  # still measured
    assert report.passed


def test_float16_tolerances_are_stated(abmil, tmp_path):
    path = export_onnx(abmil[1], tmp_path / "half.onnx", precision="float16")
    report = verify_export(path, abmil[1], plan=QUICK)
    assert report.passed, report.summary()
    assert report.precision == "float16"
    assert report.tolerances == {
        "parity_atol": 1e-2,
        "parity_rtol": 1e-2,
        "padding": 1e-3,
        "attention_sum": 1e-3,
    }
    assert report.tolerances == Tolerances.for_precision("float16").__dict__


def test_custom_plan_and_errors(abmil, abmil_artifacts, tmp_path):
    plan = VerificationPlan(cases=(BatchCase(2, 5, mixed=True),), padding=(PaddingProbe(3, 10, 1),))
    report = verify_export(abmil_artifacts[(1, "torchscript")], abmil[1], plan=plan)
    assert report.passed and report.check("one_instance_bag").passed is None  # N=1 not in this plan
    assert [c["max_instances"] for c in report.cases] == [5]
    with pytest.raises(ArtifactError, match="no such file"):
        verify_export(tmp_path / "missing.onnx", abmil[1])
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="unknown artifact type"):
        verify_export(tmp_path / "model.bin", abmil[1])


def test_metadata_of_another_model_fails(abmil, abmil_artifacts):
    report = verify_export(abmil_artifacts[(3, "onnx")], abmil[1], plan=QUICK)
    assert (
        report.check("metadata").passed is False
        and "n_classes 3 != model 1" in report.check("metadata").detail
    )


class AttentionVanishesAt77(torch.nn.Module):
    """ABMIL's exported attention, except that bags of exactly 77 instances get all-zero attention."""

    def __init__(self, model) -> None:
        super().__init__()
        self.original = model.deployment_attention

    def deployment_attention(self, att, mask):
        weights = self.original(att, mask)
        return weights * (mask.sum(1, keepdim=True) != 77).to(weights.dtype)


def test_dense_attention_scan_catches_degenerate_attention_at_one_size(abmil, tmp_path, monkeypatch):
    """The sampled batches never hold a bag of 77 instances; the dense scan does, and fails there."""
    model = abmil[1]
    broken = AttentionVanishesAt77(model)
    monkeypatch.setattr(model, "deployment_attention", broken.deployment_attention)
    path = export_onnx(model, tmp_path / "vanishing.onnx")
    monkeypatch.undo()
    plan = VerificationPlan(
        cases=(BatchCase(1, 1), BatchCase(2, 40, mixed=True)), padding=(), scan=tuple(range(70, 80))
    )
    report = verify_export(path, model, plan=plan)
    assert report.check("attention_normalised").passed and report.check("parity_attention").passed
    scan = report.check("attention_scan")
    assert scan.passed is False and "N=77: sum 0" in scan.detail and "N=76" not in scan.detail
    assert not report.passed


def test_default_plan_scans_every_small_size_and_reaches_5000():
    scan = VerificationPlan.default().scan
    assert set(range(1, 129)) <= set(scan) and max(scan) == 5000 and len(scan) > 140
    assert VerificationPlan.quick().scan[:24] == tuple(range(1, 25))
