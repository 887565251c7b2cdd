"""``milsdk.serving`` and ``milsdk predict`` work where torch cannot be imported (a client without PyTorch)."""

import subprocess
import sys
import textwrap

import numpy as np

BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc
    import sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, NoTorch())
    """
)


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], capture_output=True, text=True)


def test_the_blocker_really_blocks_torch():
    done = run_without_torch("import torch")
    assert done.returncode != 0 and "blocked by the test" in done.stderr


def test_import_and_predict_through_onnxruntime_without_torch(abmil_onnx, eager, make_bags, tmp_path):
    bags = make_bags([3, 40, 1])
    np.save(tmp_path / "bags.npy", np.array(bags, dtype=object), allow_pickle=True)
    done = run_without_torch(
        f"""
        import numpy as np
        import milsdk.serving
        import milsdk.serving.backends.triton
        from milsdk.serving import MILClient

        bags = list(np.load({str(tmp_path / "bags.npy")!r}, allow_pickle=True))
        preds = MILClient.from_path({str(abmil_onnx)!r}).predict(bags)
        np.save({str(tmp_path / "logits.npy")!r}, np.stack([p.logits for p in preds]))
        np.save({str(tmp_path / "attention.npy")!r}, np.concatenate([p.attention for p in preds]))
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    logits, attention = zip(*(eager(bag) for bag in bags))
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), np.stack(logits), atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "attention.npy"), np.concatenate(attention), atol=1e-5)


def test_predict_cli_without_torch(abmil_onnx, make_bags, tmp_path):
    for i, bag in enumerate(make_bags([5, 9])):
        np.save(tmp_path / f"bag{i}.npy", bag)
    out = tmp_path / "preds.csv"
    done = run_without_torch(
        f"""
        from milsdk.cli import main
        try:
            main(["predict", {str(abmil_onnx)!r}, {str(tmp_path)!r}, "--out", {str(out)!r}, "-q", "--no-progress"])
        except SystemExit as exit:
            assert exit.code in (0, None), exit.code
        assert "torch" not in sys.modules
        """
    )
    assert done.returncode == 0, done.stderr
    assert out.read_text().count("\n") == 3  # header + 2 bags
