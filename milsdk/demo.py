"""The main job on the embedded demo dataset: train -> checkpoint -> evaluate -> export -> predict.

Bags are sets of real 8x8 digit images (scikit-learn's bundled ``load_digits``); a bag is positive iff it holds a
9. The run trains ABMIL, saves and reloads the checkpoint, evaluates it, exports it to ONNX and TorchScript
(verified against eager PyTorch), writes the test bags as CLAM-style ``.h5`` feature files, and predicts them
through the onnxruntime backend of the serving client, as an application would. It prints bag predictions and
each bag's most attended instances (with the digit they show, so you can see attention find the 9s), and draws
attention heatmaps over the digit images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["DemoResult", "run_demo"]

TARGET_DIGIT = 9
CLASS_NAMES = ["no 9", "has a 9"]
PATCH_PX = 8  # one "patch" is one 8x8 digit image


@dataclass
class DemoResult:
    """What the demo produced (paths and the figures it printed)."""

    checkpoint: Path
    test_metrics: dict[str, float]
    served_accuracy: float
    top_attended_is_target: float
    artifacts: list[Path]
    triton_repo: Path
    heatmaps: list[Path] = field(default_factory=list)


def _write_bags(dataset, out_dir: Path) -> list[tuple[Path, np.ndarray, int]]:
    """Write each test bag as an .h5 file (``features`` (N, 64), ``coords`` (N, 2) pixel x, y), like a patch
    feature extractor would; returns (path, instance digits, bag label) per bag."""
    import h5py

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(len(dataset)):
        bag = dataset[i]
        rows_cols = bag["coords"].numpy()
        path = out_dir / f"bag_{i:03d}.h5"
        with h5py.File(path, "w") as f:
            f["features"] = bag["X"].numpy()
            f["coords"] = (rows_cols[:, ::-1] * PATCH_PX).astype(np.int64)  # (x, y) in pixels, as CLAM writes
        digits = np.where(bag["y_inst"].numpy() == 1, TARGET_DIGIT, -1)
        written.append((path, digits, int(bag["Y"])))
    return written


def _digit_thumbnail(features: np.ndarray, coords_xy: np.ndarray) -> np.ndarray:
    """The bag's digit images pasted at their positions: a stand-in for a slide thumbnail."""
    from milsdk.visualize import patches_to_canvas

    patches = [np.repeat((255 - 255 * f.reshape(PATCH_PX, PATCH_PX))[..., None], 3, axis=2) for f in features]
    cells = coords_xy // PATCH_PX
    return patches_to_canvas(patches, cells[:, 1], cells[:, 0], PATCH_PX)


def run_demo(
    out_dir: str | Path = "demo_out",
    epochs: int = 15,
    seed: int = 0,
    n_train: int = 400,
    n_test: int = 100,
    n_heatmaps: int = 2,
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """Run the whole path on the demo dataset and print what a user should see.

    Args:
        out_dir: where the checkpoint, exports, Triton repository, bag files and heatmaps go.
        epochs: training epochs (the best validation epoch is kept).
        seed: makes the run reproducible.
        n_train, n_test: number of train / test bags.
        n_heatmaps: heatmap PNGs to draw (positive test bags first).
        echo: where lines go.

    Returns:
        DemoResult.
    """
    import milsdk
    from milsdk.datasets import DigitsMILDataset
    from milsdk.export import export_checkpoint
    from milsdk.serving import MILClient, read_bag
    from milsdk.utils.training_run import evaluate_model, train_model

    logging.getLogger("milsdk").setLevel(logging.WARNING)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_set = DigitsMILDataset(num_bags=n_train, target_digit=TARGET_DIGIT, train=True, seed=seed)
    test_set = DigitsMILDataset(num_bags=n_test, target_digit=TARGET_DIGIT, train=False, seed=seed + 1)

    echo(f"[1/5] train ABMIL on {n_train} bags of 8x8 digits (a bag is positive iff it holds a {TARGET_DIGIT})")
    run = train_model(train_set, model_name="ABMIL", model_config={"att_dim": 64, "gated": True}, epochs=epochs,
                      lr=2e-3, batch_size=4, seed=seed, checkpoint_path=out / "abmil.ckpt",
                      checkpoint_metadata={"class_names": CLASS_NAMES, "feature_extractor": "digits-8x8-pixels"})
    echo(f"      best epoch {run.best_epoch}/{len(run.history)}, validation AUC {run.val_metrics['auroc']:.3f}; "
         f"saved {run.checkpoint}")

    echo("[2/5] reload the checkpoint and evaluate it on held-out test bags (images never seen in training)")
    model = milsdk.load_checkpoint(run.checkpoint)
    metrics = evaluate_model(model, test_set)
    echo(f"      test accuracy {metrics['accuracy']:.3f}   test AUC {metrics['auroc']:.3f}   "
         f"({metrics['n_bags']} bags)")

    echo("[3/5] export to ONNX + TorchScript, verified against eager PyTorch; add it to a Triton repository")
    result = export_checkpoint(run.checkpoint, out / "exports" / "abmil", formats=("onnx", "torchscript"),
                               triton_repo=out / "model_repository", name="abmil", profile="triton-python")
    for line in result.table().splitlines():
        echo("      " + line)

    echo("[4/5] write the test bags as .h5 feature files and predict them with the onnxruntime backend")
    bags = _write_bags(test_set, out / "bags")
    onnx_path = next(a.path for a in result.artifacts if a.path.suffix == ".onnx")
    with MILClient.from_path(onnx_path) as client:
        inputs = [read_bag(path) for path, _, _ in bags]
        predictions = client.predict(inputs)
    correct = sum(int(p.label == label) for p, (_, _, label) in zip(predictions, bags))
    positives = [(p, digits) for p, (_, digits, label) in zip(predictions, bags) if label == 1]
    top_hits = sum(int(digits[int(np.argmax(p.attention))] == TARGET_DIGIT) for p, digits in positives)
    echo(f"      {'bag':<8} {'P(has a 9)':>10}  {'predicted':<9} {'truth':<8} top-attended instances (index:digit)")
    for p, (_, digits, label) in list(zip(predictions, bags))[:8]:
        top = np.argsort(-p.attention)[:3]
        shown = "  ".join(f"#{i}:{'9' if digits[i] == TARGET_DIGIT else '.'} {p.attention[i]:.2f}" for i in top)
        echo(f"      {p.name:<8} {p.probabilities[-1]:>10.3f}  {p.label_name:<9} {CLASS_NAMES[label]:<8} {shown}")
    served_accuracy = correct / len(bags)
    hit_rate = top_hits / max(1, len(positives))
    echo(f"      ... {len(bags)} bags: served accuracy {served_accuracy:.3f}; in {top_hits} of {len(positives)} "
         f"positive bags the most attended instance is a {TARGET_DIGIT} ({hit_rate:.0%})")

    heatmaps: list[Path] = []
    try:
        from milsdk.visualize import save_bag_heatmap

        echo("[5/5] attention heatmaps over the bags' digit images")
        chosen = [i for i, (_, _, label) in enumerate(bags) if label == 1][:n_heatmaps]
        for i in chosen:
            bag, p = inputs[i], predictions[i]
            thumbnail = _digit_thumbnail(bag["features"], np.asarray(bag["coords"]))
            heatmaps.append(save_bag_heatmap(
                out / "heatmaps", p.name, p.attention, coords=bag["coords"], thumbnail=thumbnail,
                patch_size=PATCH_PX, slide_size=(thumbnail.shape[1], thumbnail.shape[0]),
                title=f"{p.name}: {p.label_name} (p = {p.probabilities[-1]:.2f})"))
            echo(f"      {heatmaps[-1]}")
    except ImportError as exc:  # matplotlib is the optional 'viz' extra
        echo(f"[5/5] heatmaps skipped: {exc}")

    echo("")
    echo("Next: serve the same model with Triton and call it over HTTP:")
    echo(f"  milsdk serve {out / 'model_repository'} --http-port 8000 &")
    echo(f"  milsdk predict http://127.0.0.1:8000 {out / 'bags'} --model-name abmil --out preds.csv")
    return DemoResult(run.checkpoint, metrics, served_accuracy, hit_rate, [a.path for a in result.artifacts],
                      out / "model_repository", heatmaps)
