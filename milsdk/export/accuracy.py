"""The accuracy report of a reduced-precision artifact (int8, float16, bfloat16): what it changes against eager
float32 on held-out bags, written beside the artifact as ``accuracy.json`` / ``accuracy.md``.

Per bag (each run alone): the largest change of a class probability (sigmoid or softmax of the logits, as the
client reports them; for a survival model, ``output_activation = "risk"``, the risk itself), whether the
predicted label is the same, and the Spearman rank correlation of the attention over the bag's instances
(average ranks for ties). The report passes when the largest probability change and the smallest attention
correlation meet the profile's limits (``[accuracy]``; defaults 0.02 and 0.98). The correlation limit applies to
bags of at least ``attention_min_instances`` (default 20) instances; smaller bags are reported, not judged: in a
bag of 6 one swap of two near-equal weights is rho = 0.943 (measured on the demo's bags, where int8 swaps only such
pairs), in a bag of 20 it is 0.998.

Held-out bags are feature files (``.npy`` / ``.h5``, as ``milsdk predict`` reads them) that the model was not
trained on; without them the report runs on synthetic Gaussian bags of 1 to 5,000 instances and says so: a
quantised model should be judged on its own data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from milsdk.contract import COORDS, EDGE_INDEX, FEATURES, MASK, ModelInfo
from milsdk.errors import BagError
from milsdk.export.bags import bag_batch, random_batch
from milsdk.export.files import atomic_write
from milsdk.export.artifact import read_model_info

__all__ = [
    "AccuracyReport", "accuracy_report", "held_out_bags", "spearman", "synthetic_bags", "write_accuracy_report",
]

Arrays = dict[str, np.ndarray]


@dataclass
class AccuracyReport:
    """What a reduced-precision artifact changes against eager float32 (see the module docstring)."""

    artifact: str
    precision: str
    bags_source: str
    n_bags: int
    max_probability_change: float
    median_probability_change: float
    label_agreement: float
    min_attention_spearman: float | None
    median_attention_spearman: float | None
    attention_min_instances: int
    limits: dict[str, float]
    passed: bool
    per_bag: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        """One line: the figures and whether they meet the limits."""
        rho = "n/a" if self.min_attention_spearman is None else f"{self.min_attention_spearman:.4f}"
        return (
            f"{self.artifact} ({self.precision}) on {self.n_bags} {self.bags_source} bags: "
            f"max probability change {self.max_probability_change:.4f} "
            f"(limit {self.limits['max_probability_change']}), min attention Spearman {rho} over bags of >= "
            f"{self.attention_min_instances} instances (limit {self.limits['min_attention_spearman']}), labels agree on {100 * self.label_agreement:.1f}%: "
            + ("passed" if self.passed else "FAILED")
        )

    def to_markdown(self) -> str:
        """The report as Markdown: the summary figures and one row per bag."""
        lines = [
            f"# Accuracy of {self.artifact} ({self.precision}) against eager float32",
            "",
            f"- bags: {self.n_bags} ({self.bags_source})",
            f"- probability change: max {self.max_probability_change:.5f}, median "
            f"{self.median_probability_change:.5f} (limit {self.limits['max_probability_change']})",
            f"- attention Spearman (bags of >= {self.attention_min_instances} instances): min "
            f"{_fmt(self.min_attention_spearman)}, median {_fmt(self.median_attention_spearman)} (limit "
            f"{self.limits['min_attention_spearman']}; smaller bags are listed below, not judged)",
            f"- predicted labels agree: {100 * self.label_agreement:.1f}%",
            f"- {'passed' if self.passed else 'FAILED'}",
            "",
            "| bag | instances | probability change | attention Spearman | same label |",
            "|---|---:|---:|---:|---|",
        ]
        lines += [
            f"| {b['name']} | {b['n_instances']} | {b['probability_change']:.5f} | {_fmt(b['attention_spearman'])} "
            f"| {'yes' if b['same_label'] else 'no'} |"
            for b in self.per_bag
        ]
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.5f}"


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    if len(unique) < len(values):  # average the ranks of equal values
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two 1-D arrays of the same length (>= 2). Two constant arrays count as 1.0
    (the same ranking); one constant and one not as 0.0."""
    ra, rb = _ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    if denom == 0.0:
        return 1.0 if not ra.any() and not rb.any() else 0.0
    return float((ra * rb).sum() / denom)


def _probabilities(logits: np.ndarray, activation: str) -> np.ndarray:
    z = np.asarray(logits, np.float64).reshape(-1)
    if activation == "risk":
        return z
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    e = np.exp(z - z.max())
    return e / e.sum()


def _label(probabilities: np.ndarray, info: ModelInfo) -> int | None:
    if info.output_activation == "risk":
        return None
    if probabilities.size == 1:
        return int(probabilities[0] >= info.threshold)
    return int(np.argmax(probabilities))


def synthetic_bags(info: ModelInfo, count: int = 24, largest: int = 5000, seed: int = 0) -> list[tuple[str, Arrays]]:
    """``count`` standard-normal bags of 1..``largest`` instances (log-spaced), each a batch of one in the contract
    layout (features, mask and the model's extra inputs)."""
    rng = np.random.default_rng(seed)
    sizes = sorted({int(round(n)) for n in np.geomspace(1, largest, count)})
    return [(f"synthetic-{n}", random_batch([n], n, info.feature_dim, info.inputs, rng)) for n in sizes]


def held_out_bags(paths: Sequence[str | os.PathLike], info: ModelInfo) -> list[tuple[str, Arrays]]:
    """The bags of feature files (folders are searched for ``.npy`` / ``.h5``), each a batch of one in the contract
    layout; a graph model's edges are the 8-neighbour graph of the coords, as the client builds them.

    Raises:
        BagError: no bag files, an unreadable one, features of another dimension, or a model input the file
            lacks (one line naming the file).
    """
    from milsdk.serving.inputs import find_bag_files, read_bag

    files = find_bag_files(paths)
    if not files:
        raise BagError(f"accuracy bags {', '.join(map(str, paths))}: no .npy / .h5 bag files found")
    out = []
    for path in files:
        bag = read_bag(path)
        features = np.ascontiguousarray(bag["features"], dtype=np.float32)
        dim = features.shape[1]
        if dim != info.feature_dim:
            raise BagError(f"{path}: features have dimension {dim}, model {info.model_name} expects "
                           f"{info.feature_dim}")
        coords = bag["coords"]
        if (COORDS in info.inputs or EDGE_INDEX in info.inputs) and coords is None:
            raise BagError(f"{path}: model {info.model_name} needs coords; the file has none")
        one = {FEATURES: features}
        if coords is not None:
            one[COORDS] = np.ascontiguousarray(coords, dtype=np.float32)
        arrays = bag_batch(one, info.inputs)
        out.append((bag["name"], arrays))
    return out


def accuracy_report(
    artifact_path: str | os.PathLike,
    model: torch.nn.Module,
    bags: Sequence[tuple[str, Arrays]],
    *,
    bags_source: str,
    max_probability_change: float = 0.02,
    min_attention_spearman: float = 0.98,
    attention_min_instances: int = 20,
) -> AccuracyReport:
    """Compare an ONNX or TorchScript artifact with its eager float32 model on each bag alone.

    Args:
        artifact_path: the reduced-precision ``.onnx`` or ``.pt`` file.
        model: the eager model it was exported from.
        bags: (name, inputs) pairs, inputs a batch of one bag: features (1, N, D), mask (1, N), extra inputs.
        bags_source: where the bags come from, for the report ("held-out: <paths>" or "synthetic Gaussian").
        max_probability_change, min_attention_spearman: the pass limits.
        attention_min_instances: the smallest bag the Spearman limit judges (>= 3).

    Returns:
        The report (``passed`` says whether the limits are met).
    """
    from milsdk.export.artifact import artifact_format
    from milsdk.export.verify import _artifact_runner, _eager_runner

    path = Path(artifact_path)
    info = read_model_info(path)
    run, (eager, _) = _artifact_runner(path, artifact_format(path), info), _eager_runner(model)
    per_bag, changes, rhos, same = [], [], [], []
    for name, inputs in bags:
        logits, attention = run(inputs)
        ref_logits, ref_attention = eager(inputs)
        p, q = _probabilities(logits, info.output_activation), _probabilities(ref_logits, info.output_activation)
        change = float(np.abs(p - q).max())
        n = int(inputs[MASK].sum())
        rho = spearman(attention[0, :n], ref_attention[0, :n]) if n >= 3 else None
        agree = _label(p, info) == _label(q, info)
        changes.append(change)
        same.append(agree)
        if rho is not None and n >= attention_min_instances:
            rhos.append(rho)
        per_bag.append({"name": name, "n_instances": n, "probability_change": change, "attention_spearman": rho,
                        "same_label": agree})
    limits = {"max_probability_change": float(max_probability_change),
              "min_attention_spearman": float(min_attention_spearman)}
    worst_rho = min(rhos) if rhos else None
    passed = bool(changes) and max(changes) <= max_probability_change and (
        worst_rho is None or worst_rho >= min_attention_spearman)
    return AccuracyReport(
        artifact=path.name, precision=_precision_label(info.extra.get("export", {})),
        bags_source=bags_source, n_bags=len(per_bag), max_probability_change=max(changes, default=0.0),
        median_probability_change=float(np.median(changes)) if changes else 0.0,
        label_agreement=float(np.mean(same)) if same else 1.0, min_attention_spearman=worst_rho,
        median_attention_spearman=float(np.median(rhos)) if rhos else None,
        attention_min_instances=int(attention_min_instances), limits=limits, passed=passed,
        per_bag=per_bag,
    )


def _precision_label(export: dict[str, Any]) -> str:
    """"int8", "float16", or "float32, float16 features" for a float32 model fed float16 on the wire."""
    precision = str(export.get("precision", "float32"))
    if str(export.get("features_dtype", "float32")) == "float16" and precision != "float16":
        return f"{precision}, float16 features"
    return precision


def write_accuracy_report(report: AccuracyReport, directory: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``accuracy.json`` and ``accuracy.md`` into ``directory``; returns their paths."""
    directory = Path(directory)
    text = json.dumps(asdict(report), indent=2)
    json_path = atomic_write(directory / "accuracy.json", lambda tmp: Path(tmp).write_text(text))
    md_path = atomic_write(directory / "accuracy.md", lambda tmp: Path(tmp).write_text(report.to_markdown()))
    return json_path, md_path
