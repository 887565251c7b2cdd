import numpy as np
from click.testing import CliRunner

import milsdk
from milsdk.cli import main


def _write_processed(root, n_bags=24, dim=6):
    rng = np.random.default_rng(0)
    for sub in ("features", "labels"):
        (root / sub).mkdir(parents=True)
    for i in range(n_bags):
        label = i % 2
        x = rng.normal(size=(int(rng.integers(3, 9)), dim)).astype(np.float32)
        if label:
            x[0, 0] += 5.0
        np.save(root / "features" / f"bag{i:02d}.npy", x)
        np.save(root / "labels" / f"bag{i:02d}.npy", np.array([label]))


def test_train_on_processed_folder_writes_checkpoint(tmp_path):
    _write_processed(tmp_path / "data")
    out = tmp_path / "m.ckpt"
    result = CliRunner().invoke(main, ["train", str(tmp_path / "data"), "--out", str(out), "--epochs", "3",
                                       "--set", "att_dim=16", "--class-names", "benign,tumour"])
    assert result.exit_code == 0, result.output
    assert "val: accuracy" in result.output and "checkpoint:" in result.output
    model = milsdk.load_checkpoint(out)
    assert model.in_shape == (6,) and model.config["att_dim"] == 16
    assert model.checkpoint_metadata["class_names"] == ["benign", "tumour"]


def test_missing_label_file_is_one_line_error_naming_it(tmp_path):
    _write_processed(tmp_path / "data", n_bags=4)
    (tmp_path / "data" / "labels" / "bag02.npy").unlink()
    result = CliRunner().invoke(main, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "m.ckpt"),
                                       "--epochs", "1"])
    assert result.exit_code == 1
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and "bag02" in error_lines[0]
    assert not (tmp_path / "m.ckpt").exists()


def test_help_has_an_example():
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0 and "milsdk train --demo --out abmil.ckpt" in result.output


def test_nproc_2_trains_with_ddp_and_rank0_writes_one_checkpoint(tmp_path, process_tree_runner):
    import sys

    _write_processed(tmp_path / "data", n_bags=16)
    out = tmp_path / "ddp.ckpt"
    proc = process_tree_runner(
        [sys.executable, "-m", "milsdk.cli", "train", str(tmp_path / "data"), "--out", str(out), "--epochs", "2",
         "--nproc", "2", "--batch-size", "2"],
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("checkpoint:") == 1  # rank 0 alone reports and writes
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".ckpt"] == ["ddp.ckpt"]
    assert milsdk.load_checkpoint(out).in_shape == (6,)
