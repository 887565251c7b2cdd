"""The accuracy report of reduced-precision exports: Spearman with ties, the report's figures against a direct
computation, held-out feature files, limits that fail the export with nothing written, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from milsdk.cli import main
from milsdk.errors import BagError, VerificationError
from milsdk.export.accuracy import accuracy_report, held_out_bags, spearman, synthetic_bags
from milsdk.export.api import export_checkpoint
from milsdk.export.artifact import read_model_info
from milsdk.export.onnx import export_onnx
from milsdk.export.signature import DeploymentModule, model_info
from milsdk.export.verify import VerificationPlan
from milsdk.models import ABMIL
from milsdk.utils.checkpoint import save_checkpoint

D = 32


def test_spearman_matches_hand_computed_values():
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([4.0, 3, 2, 1])) == pytest.approx(-1.0)
    # ranks (0, 1, 2) vs (0, 2, 1): 1 - 6 * 2 / (3 * 8) = 0.5
    assert spearman(np.array([1.0, 2, 3]), np.array([1.0, 3, 2])) == pytest.approx(0.5)
    # ties share the average rank: (0, 1.5, 1.5, 3) vs (0, 1, 2, 3) -> Pearson of the ranks
    ra, rb = np.array([0, 1.5, 1.5, 3]), np.arange(4.0)
    want = np.corrcoef(ra, rb)[0, 1]
    assert spearman(np.array([1.0, 5, 5, 9]), np.array([1.0, 2, 3, 4])) == pytest.approx(want)
    assert spearman(np.ones(5), np.ones(5)) == 1.0 and spearman(np.ones(5), np.arange(5.0)) == 0.0


@pytest.fixture(scope="module")
def int8_abmil(tmp_path_factory):
    folder = tmp_path_factory.mktemp("accuracy")
    torch.manual_seed(0)
    model = ABMIL(in_shape=(D,), att_dim=16).eval()
    return model, export_onnx(model, folder / "model.onnx", precision="int8"), folder


def test_report_figures_equal_a_direct_computation(int8_abmil):
    model, path, _ = int8_abmil
    info = model_info(model)
    bags = synthetic_bags(info, count=6, largest=400)
    report = accuracy_report(path, model, bags, bags_source="synthetic")
    assert report.n_bags == len(bags) == len(report.per_bag) and report.precision == "int8"
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for (name, inputs), row in zip(bags, report.per_bag):
        logits, att = session.run(None, inputs)
        with torch.no_grad():
            ref_logits, ref_att = model(torch.from_numpy(inputs["features"]), return_att=True)
            ref_att = torch.softmax(ref_att, -1)
        change = abs(1 / (1 + np.exp(-logits.item())) - torch.sigmoid(ref_logits).item())
        assert row["name"] == name and row["probability_change"] == pytest.approx(change, abs=1e-6)
        n = inputs["features"].shape[1]
        if n >= 3:  # listed for every bag of >= 3; judged from attention_min_instances (20) on
            assert row["attention_spearman"] == pytest.approx(spearman(att[0], ref_att[0].numpy()), abs=1e-9)
        else:
            assert row["attention_spearman"] is None
    assert report.max_probability_change == max(r["probability_change"] for r in report.per_bag)
    assert 0 < report.max_probability_change <= 0.02 and report.min_attention_spearman >= 0.98 and report.passed
    judged = [r["attention_spearman"] for r in report.per_bag if r["n_instances"] >= 20]
    assert report.min_attention_spearman == min(judged) and report.attention_min_instances == 20
    strict = accuracy_report(path, model, bags, bags_source="synthetic", max_probability_change=1e-9)
    assert not strict.passed and "FAILED" in strict.summary()
    perfect = accuracy_report(path, model, bags, bags_source="synthetic", min_attention_spearman=1.0)
    assert not perfect.passed  # int8 reorders some near-equal weights in the larger bags
    unjudged = accuracy_report(path, model, bags, bags_source="synthetic", min_attention_spearman=1.0,
                               attention_min_instances=10**6)
    assert unjudged.passed and unjudged.min_attention_spearman is None and "n/a" in unjudged.summary()


def test_held_out_bags_from_feature_files(tmp_path, int8_abmil):
    model, _, _ = int8_abmil
    info = model_info(model)
    rng = np.random.default_rng(0)
    (tmp_path / "slides").mkdir()
    for i, n in enumerate((5, 40)):
        np.save(tmp_path / "slides" / f"s{i}.npy", rng.standard_normal((n, D)).astype(np.float32))
    bags = held_out_bags([tmp_path / "slides"], info)
    assert [(name, b["features"].shape, b["mask"].shape) for name, b in bags] == [
        ("s0", (1, 5, D), (1, 5)), ("s1", (1, 40, D), (1, 40))]
    np.save(tmp_path / "wrong.npy", np.zeros((3, D + 1), np.float32))
    with pytest.raises(BagError, match=f"wrong.npy: features have dimension {D + 1}, model ABMIL expects {D}"):
        held_out_bags([tmp_path / "wrong.npy"], info)
    with pytest.raises(BagError, match="nothing: no such file or folder"):
        held_out_bags([tmp_path / "nothing"], info)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match="empty"):
        held_out_bags([tmp_path / "empty"], info)


def test_int8_export_writes_the_report_beside_the_artifact_and_fails_past_the_limits(tmp_path):
    torch.manual_seed(1)
    ckpt = save_checkpoint(ABMIL(in_shape=(D,), att_dim=16).eval(), tmp_path / "abmil.ckpt")
    result = export_checkpoint(ckpt, tmp_path / "out", profile="cpu-int8", plan=VerificationPlan.quick())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "accuracy.json", "accuracy.md", "model.onnx", "verification.json", "verification.md"]
    saved = json.loads((tmp_path / "out" / "accuracy.json").read_text())
    assert saved["passed"] and saved["precision"] == "int8" and saved["bags_source"].startswith("synthetic")
    assert result.accuracy is not None and result.accuracy.max_probability_change == saved["max_probability_change"]
    strict = tmp_path / "strict.toml"
    strict.write_text('precision = "int8"\nformats = ["onnx"]\n[accuracy]\nmax_probability_change = 0.0\n')
    with pytest.raises(VerificationError, match="nothing written, .*max probability change .*FAILED"):
        export_checkpoint(ckpt, tmp_path / "strict_out", profile=strict, plan=VerificationPlan.quick())
    assert not (tmp_path / "strict_out").exists()


def test_a_profile_with_int8_weights_exports_int8_weights(tmp_path):
    """``int8_weights = "int8"`` (as in cpu-int8-vnni) reaches the quantiser and the artifact's metadata. Limits
    of 1 / 0 here: int8 weights are exact only where the CPU has VNNI, and this test runs on any CPU."""
    from onnx import TensorProto

    torch.manual_seed(1)
    ckpt = save_checkpoint(ABMIL(in_shape=(D,), att_dim=16).eval(), tmp_path / "abmil.ckpt")
    profile = tmp_path / "vnni.toml"
    profile.write_text('precision = "int8"\nint8_weights = "int8"\nformats = ["onnx"]\n[accuracy]\n'
                       'max_probability_change = 1.0\nmin_attention_spearman = 0.0\n')
    export_checkpoint(ckpt, tmp_path / "out", profile=profile, plan=VerificationPlan.quick())
    proto = onnx.load(tmp_path / "out" / "model.onnx")
    weights = [i for i in proto.graph.initializer if i.name.endswith("_quantized")]
    assert weights and all(w.data_type == TensorProto.INT8 for w in weights)
    assert read_model_info(tmp_path / "out" / "model.onnx").extra["export"]["int8_weights"] == "int8"


def test_cli_int8_export_with_held_out_bags(tmp_path):
    torch.manual_seed(2)
    ckpt = save_checkpoint(ABMIL(in_shape=(D,), att_dim=16).eval(), tmp_path / "abmil.ckpt")
    (tmp_path / "held_out").mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        np.save(tmp_path / "held_out" / f"slide{i}.npy", np.abs(rng.standard_normal((50 + i, D))).astype(np.float32))
    result = CliRunner().invoke(main, ["export", str(ckpt), "--profile", "cpu-int8", "-o", str(tmp_path / "out"),
                                       "--accuracy-bags", str(tmp_path / "held_out")])
    assert result.exit_code == 0, result.output
    assert "accuracy report:" in result.output and "on 3 held-out" in result.output
    assert "| slide2 | 52 |" in (tmp_path / "out" / "accuracy.md").read_text()
    bad = CliRunner().invoke(main, ["export", str(ckpt), "--profile", "cpu-int8", "-o", str(tmp_path / "bad"),
                                    "--accuracy-bags", str(tmp_path / "none")])
    assert bad.exit_code != 0 and "none: no such file or folder" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "bad").exists()


def test_bfloat16_export_is_torchscript_with_its_report_and_serves_close_to_float32(tmp_path):
    from milsdk.serving import MILClient

    torch.manual_seed(4)
    model = ABMIL(in_shape=(D,), att_dim=16).eval()
    ckpt = save_checkpoint(model, tmp_path / "abmil.ckpt")
    result = CliRunner().invoke(main, ["export", str(ckpt), "--profile", "cpu-bf16", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "accuracy.json", "accuracy.md", "model.pt", "verification.json", "verification.md"]
    saved = json.loads((tmp_path / "out" / "accuracy.json").read_text())
    assert saved["passed"] and (saved["artifact"], saved["precision"]) == ("model.pt", "bfloat16")
    assert 0 < saved["max_probability_change"] <= 0.02 and saved["min_attention_spearman"] >= 0.98
    assert read_model_info(tmp_path / "out" / "model.pt").extra["export"]["precision"] == "bfloat16"
    bags = [np.random.default_rng(i).standard_normal((n, D)).astype(np.float32) for i, n in enumerate((3, 40, 7))]
    eager = DeploymentModule(model)
    with MILClient.from_path(tmp_path / "out" / "model.pt") as client:
        got = client.predict(bags)
    for g, bag in zip(got, bags):
        with torch.no_grad():
            logits, attention = eager(torch.from_numpy(bag)[None], torch.ones(1, len(bag), dtype=torch.bool))
        np.testing.assert_allclose(g.logits, logits[0].numpy(), atol=2e-2, rtol=2e-2)
        np.testing.assert_allclose(g.attention, attention[0].numpy(), atol=2e-2, rtol=2e-2)
        assert not np.array_equal(g.attention, attention[0].numpy())  # bfloat16 products, not float32 ones
    onnx_asked = CliRunner().invoke(main, ["export", str(ckpt), "--profile", "cpu-bf16", "--format", "onnx",
                                           "-o", str(tmp_path / "onnx")])
    assert onnx_asked.exit_code != 0 and "precision bfloat16 is a TorchScript export" in onnx_asked.output
    assert "Traceback" not in onnx_asked.output and not (tmp_path / "onnx").exists()
