"""The README's main job, end to end: train -> save/reload -> evaluate -> export (verified) -> predict -> heatmaps."""

import numpy as np
from click.testing import CliRunner

from milsdk.cli import main
from milsdk.demo import run_demo
from milsdk.serving import MILClient, read_bag


def test_demo_runs_the_whole_path_with_auc_well_above_chance(tmp_path):
    lines: list[str] = []
    result = run_demo(tmp_path, echo=lines.append)
    assert result.test_metrics["auroc"] > 0.85
    assert result.served_accuracy > 0.75
    assert result.top_attended_is_target > 0.7  # attention finds the 9s
    assert sorted(p.name for p in result.artifacts) == ["model.onnx", "model.pt"]
    assert (result.triton_repo / "abmil" / "config.pbtxt").is_file()
    assert len(result.heatmaps) == 2 and all(p.stat().st_size > 0 for p in result.heatmaps)
    assert any("test AUC" in line for line in lines)
    # the served predictions agree with the TorchScript artifact
    bag = read_bag(tmp_path / "bags" / "bag_000.h5")
    onnx = MILClient.from_path(tmp_path / "exports" / "abmil" / "model.onnx").predict([bag])[0]
    pt = MILClient.from_path(tmp_path / "exports" / "abmil" / "model.pt").predict([bag])[0]
    np.testing.assert_allclose(onnx.attention, pt.attention, atol=1e-5)


def test_demo_command_help():
    result = CliRunner().invoke(main, ["demo", "--help"])
    assert result.exit_code == 0 and "milsdk demo --out-dir demo_out" in result.output
