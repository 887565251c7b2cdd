import numpy as np
import pytest
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


def _write_labels(root, labels):
    for i, label in enumerate(labels):
        np.save(root / "labels" / f"bag{i:02d}.npy", np.array([label]))


def test_three_labels_train_a_three_class_model(tmp_path):
    _write_processed(tmp_path / "data", n_bags=12)
    _write_labels(tmp_path / "data", [i % 3 for i in range(12)])
    out = tmp_path / "m.ckpt"
    result = CliRunner().invoke(main, ["train", str(tmp_path / "data"), "--out", str(out), "--epochs", "1",
                                       "--set", "att_dim=8", "--class-names", "a,b,c"])
    assert result.exit_code == 0, result.output
    assert "training ABMIL on 12 bags, labels 0..2: 3 classes (4, 4, 4 bags), for up to 1 epochs" in result.output
    model = milsdk.load_checkpoint(out)
    assert model.n_classes == 3 and model.checkpoint_metadata["class_names"] == ["a", "b", "c"]


def _one_error(result):
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert "Epoch" not in result.output and "Traceback" not in result.output  # refused before the first epoch
    return errors[0]


def test_class_names_of_the_wrong_length_are_refused_at_train_time(tmp_path):
    _write_processed(tmp_path / "data", n_bags=12)
    _write_labels(tmp_path / "data", [i % 3 for i in range(12)])
    out = tmp_path / "m.ckpt"
    result = CliRunner().invoke(main, ["train", str(tmp_path / "data"), "--out", str(out), "--epochs", "1",
                                       "--class-names", "normal,tumor"])
    assert result.exit_code == 2
    assert _one_error(result) == (
        "Error: Invalid value for --class-names: class_names has 2 names (normal, tumor); a 3-class model needs 3 "
        "(labels 0..2: 3 classes (4, 4, 4 bags))"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("label", "extra", "error"),
    [
        (2, ["--set", "n_classes=1"], "Error: training set: bag 'bag05' has label 2, outside the model's classes: "
         "n_classes=1 is a binary model (labels 0 and 1); leave n_classes unset to infer it from the labels"),
        (0.5, [], "Error: training set: bag 'bag05' has label 0.5, expected a class index 0, 1, ..."),
        (-1, [], "Error: training set: bag 'bag05' has label -1, expected a class index 0, 1, ..."),
    ],
)
def test_labels_that_are_not_class_indices_name_the_bag(tmp_path, label, extra, error):
    _write_processed(tmp_path / "data", n_bags=8)
    np.save(tmp_path / "data" / "labels" / "bag05.npy", np.array([label]))
    out = tmp_path / "m.ckpt"
    result = CliRunner().invoke(main, ["train", str(tmp_path / "data"), "--out", str(out), "--epochs", "1",
                                       *extra])
    assert result.exit_code == 1
    assert _one_error(result) == error
    assert not out.exists()


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("nan", "bag05.npy: features contain NaN or inf"),
        ("empty", "bag05.npy: bag has 0 instances (shape (0, 6))"),
        ("unreadable", "bag05.npy: cannot read .npy file"),
    ],
)
def test_bad_bag_is_refused_before_the_first_epoch(tmp_path, kind, error):
    _write_processed(tmp_path / "data", n_bags=8)
    path = tmp_path / "data" / "features" / "bag05.npy"
    if kind == "nan":
        x = np.load(path)
        x[1, 2] = np.nan
        np.save(path, x)
    elif kind == "empty":
        np.save(path, np.zeros((0, 6), np.float32))
    else:
        path.write_bytes(b"\x93NUMPY garbage")
    out = tmp_path / "m.ckpt"
    result = CliRunner().invoke(main, ["train", str(tmp_path / "data"), "--out", str(out), "--epochs", "1"])
    assert result.exit_code == 1
    line = _one_error(result)
    assert line.startswith(f"Error: {path}") and error in line
    assert not out.exists()


def test_ctrl_c_exits_130_and_keeps_the_best_epoch_so_far(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    _write_processed(tmp_path / "data", n_bags=20)  # 4 validation bags of both labels: AUROC is defined
    out = tmp_path / "run" / "m.ckpt"
    log = tmp_path / "stderr.txt"
    # a shell's background job inherits SIGINT ignored; give the child Python's normal Ctrl-C handling
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "milsdk.cli", "train", str(tmp_path / "data"), "--out", str(out),
             "--epochs", "100000", "--set", "att_dim=8"],
            stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            deadline = time.monotonic() + 120
            while "[Epoch 3] train" not in log.read_text():  # epochs 1 and 2 have finished
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            stdout, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = log.read_text()
    assert proc.returncode == 130, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("Interrupted: training stopped in epoch ") and "Traceback" not in stderr
    assert "; best checkpoint so far (epoch " in last and last.endswith(f"saved to {out}")
    model = milsdk.load_checkpoint(out)
    training = model.checkpoint_metadata["training"]
    assert training["best_epoch"] >= 1 and training["interrupted_in_epoch"] >= 3
    assert [p.name for p in out.parent.iterdir()] == ["m.ckpt"]  # no temporary file left
