"""Verify an exported artifact against eager PyTorch before it is published.

The artifact (onnxruntime CPU session for .onnx, ``torch.jit.load`` for .pt) and the eager model in the
deployment signature run the same fresh random bags, at batch sizes 1..8 and bag sizes 1..5000, including
batches whose bags have different sizes (mixed padding). Checks (DESIGN.md, "Deployment contract"):

- parity: max abs difference of logits and of attention vs eager float32 (float32 artifacts <= 1e-4; float16
  artifacts |a - e| <= 1e-2 + 1e-2 |e|, because half precision keeps ~3 significant digits; bfloat16 ones
  2e-2 + 2e-2 |e|: 8 significant bits in their Linear layers' products);
- padding invariance, on the artifact itself: a bag alone vs the same bag padded inside a larger batch
  (<= 1e-5; float16 <= 1e-3; bfloat16 <= 1e-2). A model declaring ``padding_invariant = False`` is reported as
  "declared not invariant" with its note and its measured numbers, without failing;
- every output finite; a one-instance bag gives finite logits and attention 1;
- attention sums to 1 over the real instances (<= 1e-4; float16 1e-3) and is 0 on padding;
- attention scan: bags of every size in a dense scan (each size 1..128, then about 12 sizes per decade up to
  5000), each checked to be a distribution over its real instances (finite, >= 0, sums to 1), so that a
  degenerate attention at some sizes (all zero, negative) cannot hide between the sampled batch sizes;
- outputs have the contract's shapes and dtypes; the metadata names the verified model.

The report records the sizes tried, every number, errors, library versions and timings; write it beside the
artifact with :func:`write_reports` (``verification.json`` / ``verification.md``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from milsdk._version import __version__
from milsdk.contract import MASK, ModelInfo, input_kind
from milsdk.errors import ArtifactError, first_line
from milsdk.export.artifact import artifact_format, read_model_info
from milsdk.export.bags import random_batch
from milsdk.export.files import atomic_write
from milsdk.export.quiet import quiet_exporter
from milsdk.export.signature import DeploymentModule

__all__ = [
    "BatchCase",
    "Check",
    "PaddingProbe",
    "Tolerances",
    "VerificationPlan",
    "VerificationReport",
    "dense_scan",
    "library_versions",
    "verify_export",
    "write_reports",
]


# -- plan and tolerances -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchCase:
    """One padded batch: ``batch`` bags; all of ``max_instances`` instances, or (``mixed``) random sizes in
    1..max_instances with at least one bag of max_instances."""

    batch: int
    max_instances: int
    mixed: bool = False


@dataclass(frozen=True)
class PaddingProbe:
    """A bag of ``n_instances`` run alone, then at position batch // 2 of a ``batch``-bag batch padded to
    ``padded_to`` instances."""

    n_instances: int
    padded_to: int
    batch: int


@dataclass(frozen=True)
class VerificationPlan:
    """The batches, padding probes and attention-scan bag sizes a verification runs."""

    cases: tuple[BatchCase, ...]
    padding: tuple[PaddingProbe, ...]
    scan: tuple[int, ...] = ()

    @classmethod
    def default(cls) -> VerificationPlan:
        """Batch sizes 1..8, bag sizes 1..5000 (one-instance bags, small, medium, 5000, mixed padding)."""
        return cls(
            cases=(
                BatchCase(1, 1),
                BatchCase(2, 3, mixed=True),
                BatchCase(3, 17, mixed=True),
                BatchCase(4, 64),
                BatchCase(5, 250, mixed=True),
                BatchCase(6, 511, mixed=True),
                BatchCase(7, 1000, mixed=True),
                BatchCase(8, 2000, mixed=True),
                BatchCase(1, 5000),
                BatchCase(3, 5000, mixed=True),
            ),
            padding=(PaddingProbe(1, 300, 3), PaddingProbe(37, 1000, 4), PaddingProbe(700, 5000, 2)),
            scan=dense_scan(128, 5000),
        )

    @classmethod
    def quick(cls) -> VerificationPlan:
        """A light plan (seconds) for tests and previews: still N=1, mixed padding and sizes unlike the
        example."""
        return cls(
            cases=(BatchCase(1, 1), BatchCase(3, 9, mixed=True), BatchCase(2, 40, mixed=True)),
            padding=(PaddingProbe(1, 20, 2), PaddingProbe(5, 33, 3)),
            scan=dense_scan(24, 300),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "cases": [asdict(c) for c in self.cases],
            "padding": [asdict(p) for p in self.padding],
            "scan": list(self.scan),
        }


def dense_scan(every_up_to: int, largest: int, per_decade: int = 12) -> tuple[int, ...]:
    """Bag sizes: every size 1..``every_up_to``, then ``per_decade`` log-spaced sizes per decade up to
    ``largest`` (included)."""
    sizes = set(range(1, every_up_to + 1))
    if largest > every_up_to:
        count = max(2, int(np.ceil(np.log10(largest / every_up_to) * per_decade)) + 1)
        sizes.update(int(round(n)) for n in np.geomspace(every_up_to, largest, count))
    return tuple(sorted(sizes))


@dataclass(frozen=True)
class Tolerances:
    """Pass thresholds. Parity passes when |artifact - eager| <= parity_atol + parity_rtol * |eager|
    everywhere."""

    parity_atol: float
    parity_rtol: float
    padding: float
    attention_sum: float

    @classmethod
    def for_precision(cls, precision: str) -> Tolerances:
        """float32: 1e-4 parity, 1e-5 padding, 1e-4 sums. float16: 1e-2 + 1e-2 |e| parity, 1e-3 padding and
        sums. int8: 5e-2 + 5e-2 |e| parity (the int8 weights' rounding; the accuracy report states the effect on
        probabilities and attention ranks), 5e-2 padding (zeros never change the activations' scale, but it is
        per tensor: the other bags of a batch move a bag's result by about one quantisation step), 1e-4 sums
        (the softmax stays float32). bfloat16 (the Linear layers' products; :mod:`milsdk.nn.linear`): 2e-2 + 2e-2
        |e| parity (the demo's trained ABMIL: 1.7e-2 at bags of up to 5,000), 1e-2 padding, 1e-4 sums (the
        softmax stays float32)."""
        if precision == "int8":
            return cls(parity_atol=5e-2, parity_rtol=5e-2, padding=5e-2, attention_sum=1e-4)
        if precision == "float16":
            return cls(parity_atol=1e-2, parity_rtol=1e-2, padding=1e-3, attention_sum=1e-3)
        if precision == "bfloat16":
            return cls(parity_atol=2e-2, parity_rtol=2e-2, padding=1e-2, attention_sum=1e-4)
        return cls(parity_atol=1e-4, parity_rtol=0.0, padding=1e-5, attention_sum=1e-4)


# -- report --------------------------------------------------------------------------------------------------
@dataclass
class Check:
    """One verified property. ``passed`` is None where it does not apply (declared not padding-invariant)."""

    name: str
    passed: bool | None
    value: float | None = None
    tolerance: float | None = None
    detail: str = ""


@dataclass
class VerificationReport:
    """Everything a verification did and found (see the module docstring)."""

    artifact: str
    format: str
    model_name: str
    precision: str
    passed: bool
    checks: list[Check]
    cases: list[dict[str, Any]]
    padding: list[dict[str, Any]]
    tolerances: dict[str, float]
    plan: dict[str, Any]
    example_sizes: list[int] | None
    errors: list[str]
    versions: dict[str, str]
    timings: dict[str, float]
    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )

    def check(self, name: str) -> Check:
        """The check called ``name``."""
        return next(c for c in self.checks if c.name == name)

    @property
    def parity_error(self) -> float | None:
        """Max abs difference artifact vs eager over logits and attention (None if nothing ran)."""
        values = [self.check(n).value for n in ("parity_logits", "parity_attention")]
        values = [v for v in values if v is not None]
        return max(values) if values else None

    @property
    def padding_error(self) -> float | None:
        """Max abs difference of a bag alone vs padded in a batch (None if nothing ran)."""
        values = [self.check(n).value for n in ("padding_logits", "padding_attention")]
        values = [v for v in values if v is not None]
        return max(values) if values else None

    @property
    def failed_checks(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if c.passed is False]

    def summary(self) -> str:
        """One line: verdict and the numbers."""
        verdict = (
            "passed"
            if self.passed
            else "FAILED "
            + ", ".join(
                f"{c.name} ({_fmt(c.value)} > {_fmt(c.tolerance)})"
                if c.tolerance is not None
                else f"{c.name} ({c.detail})"
                for c in self.failed_checks
            )
        )
        return (
            f"{self.artifact}: verification {verdict}; parity {_fmt(self.parity_error)}, "
            f"padding {_fmt(self.padding_error)}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    def to_json(self) -> str:
        """Indented JSON."""
        return json.dumps(self.to_dict(), indent=2, default=str)

    def to_markdown(self) -> str:
        """A readable report: verdict, checks, sizes tried, versions and timings."""
        mark = {True: "pass", False: "**FAIL**", None: "n/a"}
        lines = [
            f"## {self.artifact} ({self.format}, {self.precision}): {'passed' if self.passed else 'FAILED'}",
            "",
            (
                f"Model {self.model_name}; verified {self.created} against eager PyTorch float32 on fresh "
                f"random bags (export example sizes {self.example_sizes or 'n/a'})."
            ),
            "",
            "| check | result | value | tolerance | detail |",
            "|---|---|---|---|---|",
            *[
                f"| {c.name} | {mark[c.passed]} | {_fmt(c.value)} | {_fmt(c.tolerance)} | {c.detail} |"
                for c in self.checks
            ],
            "",
            "| batch | bag sizes | logits diff | attention diff | sum err | artifact ms | eager ms | error |",
            "|---|---|---|---|---|---|---|---|",
            *[
                f"| {c['batch']} | {c['sizes']} | {_fmt(c.get('logits_diff'))} | "
                f"{_fmt(c.get('attention_diff'))} | {_fmt(c.get('attention_sum_error'))} | "
                f"{_fmt(c.get('artifact_ms'))} | {_fmt(c.get('eager_ms'))} | "
                f"{c.get('error') or ''} |"
                for c in self.cases
            ],
            "",
            "| padding probe (bag / padded to / batch) | logits diff | attention diff | error |",
            "|---|---|---|---|",
            *[
                f"| {p['n_instances']} / {p['padded_to']} / {p['batch']} | {_fmt(p.get('logits_diff'))} | "
                f"{_fmt(p.get('attention_diff'))} | {p.get('error') or ''} |"
                for p in self.padding
            ],
            "",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in self.versions.items()),
            "",
            "Timings (s): " + ", ".join(f"{k} {v:.3f}" for k, v in self.timings.items()),
        ]
        if self.errors:
            lines += ["", "Errors:", *[f"- {e}" for e in self.errors]]
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4g}"
    return f"{value:.2e}"


def write_reports(reports: Sequence[VerificationReport], directory: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``verification.json`` and ``verification.md`` for the artifacts of one export into ``directory``.

    Returns:
        (json path, markdown path).
    """
    directory = Path(directory)
    payload = {
        "passed": all(r.passed for r in reports),
        "milsdk_version": __version__,
        "artifacts": [r.to_dict() for r in reports],
    }
    text = json.dumps(payload, indent=2, default=str)
    markdown = "# milsdk export verification\n\n" + "\n".join(r.to_markdown() for r in reports)
    json_path = atomic_write(directory / "verification.json", lambda tmp: Path(tmp).write_text(text))
    md_path = atomic_write(directory / "verification.md", lambda tmp: Path(tmp).write_text(markdown))
    return json_path, md_path


def library_versions() -> dict[str, str]:
    """Versions of the runtimes and libraries involved."""
    versions = {"milsdk": __version__, "python": platform.python_version(), "numpy": np.__version__}
    versions["torch"] = str(torch.__version__)
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            versions[name] = str(__import__(name).__version__)
        except ImportError:
            versions[name] = "not installed"
    versions["platform"] = platform.platform()
    return versions


# -- running -------------------------------------------------------------------------------------------------
Arrays = dict[str, np.ndarray]
Runner = Callable[[Arrays], tuple[np.ndarray, np.ndarray]]


def _onnx_runner(path: Path) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # verification alternates onnxruntime runs with eager torch in this process: a pool spinning after its run
    # would take the cores of torch's next call (as in the serving backend)
    options.add_session_config_entry("session.force_spinning_stop", "1")
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - a runtime that cannot load it, whatever it raises
        message = first_line(exc, with_type=True)
        raise ArtifactError(f"{path}: onnxruntime cannot load it on the CPU: {message}") from None
    dtypes = {i.name: np.float16 if i.type == "tensor(float16)" else None for i in session.get_inputs()}
    run_options = ort.RunOptions()
    # The arena grows with every new shape; the plan tries many (DESIGN.md, "Known pitfalls").
    run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(inputs: Arrays) -> tuple[np.ndarray, np.ndarray]:
        feeds = {k: (v.astype(dtypes[k]) if dtypes.get(k) else v) for k, v in inputs.items() if k in dtypes}
        logits, attention = session.run(["logits", "attention"], feeds, run_options)
        return logits, attention

    return run


def _torchscript_runner(path: Path, input_names: list[str]) -> Runner:
    try:
        with quiet_exporter():
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - same
        message = first_line(exc, with_type=True)
        raise ArtifactError(f"{path}: torch.jit.load cannot load it: {message}") from None
    module.eval()

    def run(inputs: Arrays) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            logits, attention = module(*[torch.from_numpy(inputs[n]) for n in input_names])
        return logits.numpy(), attention.numpy()

    return run


def _artifact_runner(path: Path, fmt: str, info: ModelInfo) -> Runner:
    """The runner of an ONNX (onnxruntime, CPU) or TorchScript (torch.jit, CPU) artifact."""
    return _onnx_runner(path) if fmt == "onnx" else _torchscript_runner(path, list(info.inputs))


def _eager_runner(model: torch.nn.Module) -> tuple[Runner, DeploymentModule]:
    module = DeploymentModule(model, "float32")

    def run(inputs: Arrays) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            logits, attention = module(*[torch.from_numpy(inputs[n]) for n in module.input_names])
        return logits.numpy(), attention.numpy()

    return run, module


def _make_batch(
    lengths: Sequence[int], n: int, D: int, input_names: list[str], rng: np.random.Generator
) -> Arrays:
    """Random bags of the given sizes, padded to ``n`` in the contract's layout (the client's padding)."""
    return random_batch(lengths, n, D, input_names, rng)


def _one_bag(name: str, array: np.ndarray, row: int, n: int) -> np.ndarray:
    """Bag ``row`` of a padded batch alone: its instance axes cut to its ``n`` instances (edge axes keep their
    padding edges, which weigh 0)."""
    index = tuple(slice(row, row + 1) if i == 0 else slice(0, n) if d == "N" else slice(None)
                  for i, d in enumerate(input_kind(name).shape))
    return np.ascontiguousarray(array[index])


def _timed(run: Runner, inputs: Arrays) -> tuple[tuple[np.ndarray, np.ndarray], float]:
    start = time.perf_counter()
    out = run(inputs)
    return out, (time.perf_counter() - start) * 1e3


def _worst(values: np.ndarray) -> float:
    """Max of ``values``; inf when any is NaN or infinite (so that a comparison with a tolerance fails)."""
    return float(np.max(values, initial=0.0)) if np.isfinite(values).all() else float("inf")


def _excess(got: np.ndarray, want: np.ndarray, tol: Tolerances) -> float:
    """How far the worst element exceeds the relative part of the parity tolerance."""
    return _worst(np.abs(got.astype(np.float64) - want) - tol.parity_rtol * np.abs(want))


def _sizes(lengths: Sequence[int]) -> str:
    lengths = list(lengths)
    return str(lengths[0]) if len(set(lengths)) == 1 else ",".join(str(n) for n in lengths)


def verify_export(
    artifact_path: str | os.PathLike,
    model: torch.nn.Module,
    *,
    plan: VerificationPlan | None = None,
    tolerances: Tolerances | None = None,
    seed: int = 0,
) -> VerificationReport:
    """Run the artifact and eager PyTorch on the same random bags and check the deployment contract.

    Args:
        artifact_path: an .onnx or .pt file written by milsdk.
        model: the eager model it was exported from (eval mode).
        plan: batches and padding probes (default :meth:`VerificationPlan.default`).
        tolerances: default :meth:`Tolerances.for_precision` of the artifact's precision (float16's for a float32
            artifact whose features input is float16).
        seed: seed of the random bags.

    Returns:
        The report (``report.passed`` says whether every applicable check passed). Failures are reported, not
        raised, so that the caller can write the report or raise :class:`~milsdk.errors.VerificationError`
        with it.

    Raises:
        ArtifactError: the artifact is missing, not an artifact, or without milsdk metadata.
    """
    start_all = time.perf_counter()
    path = Path(artifact_path)
    fmt = artifact_format(path)
    info: ModelInfo = read_model_info(path)
    export = info.extra.get("export", {})
    precision = str(export.get("precision", "float32"))
    plan = plan or VerificationPlan.default()
    # float16 features on the wire round the input before a float32 model sees it: float16's tolerances
    wire16 = str(export.get("features_dtype", "float32")) == "float16"
    tol = tolerances or Tolerances.for_precision("float16" if wire16 and precision == "float32" else precision)
    errors: list[str] = []
    timings: dict[str, float] = {}

    start = time.perf_counter()
    run = _artifact_runner(path, fmt, info)
    eager, module = _eager_runner(model)
    timings["load_s"] = time.perf_counter() - start
    input_names = module.input_names
    D, C = int(model.in_shape[0]), int(model.n_outputs)

    checks: list[Check] = []
    meta_problems = [
        f"{key} {getattr(info, key)!r} != model {want!r}"
        for key, want in (
            ("model_name", str(getattr(type(model), "model_name", type(model).__name__))),
            ("feature_dim", D),
            ("n_classes", C),
            ("inputs", input_names),
        )
        if getattr(info, key) != want
    ]
    checks.append(
        Check("metadata", not meta_problems, detail="; ".join(meta_problems) or "matches the model")
    )

    rng = np.random.default_rng(seed)
    cases: list[dict[str, Any]] = []
    worst = {"logits": 0.0, "attention": 0.0, "logits_excess": -np.inf, "attention_excess": -np.inf}
    sum_err, pad_att, shape_problems, nonfinite = 0.0, 0.0, [], []
    one_instance: list[str] = []
    start = time.perf_counter()
    for case in plan.cases:
        if case.mixed:
            lengths = rng.integers(1, case.max_instances + 1, size=case.batch)
            lengths[rng.integers(case.batch)] = case.max_instances
        else:
            lengths = np.full(case.batch, case.max_instances)
        inputs = _make_batch(lengths.tolist(), case.max_instances, D, input_names, rng)
        row: dict[str, Any] = {
            "batch": case.batch,
            "max_instances": case.max_instances,
            "sizes": _sizes(lengths),
        }
        cases.append(row)
        try:
            (logits, attention), row["artifact_ms"] = _timed(run, inputs)
        except Exception as exc:  # noqa: BLE001 - a failing batch is a finding, recorded
            row["error"] = first_line(exc, with_type=True)
            errors.append(f"batch={case.batch} N={case.max_instances}: {row['error']}")
            continue
        (e_logits, e_attention), row["eager_ms"] = _timed(eager, inputs)
        want_shapes = {"logits": (case.batch, C), "attention": (case.batch, case.max_instances)}
        problems = [
            f"{name} {arr.dtype}{list(arr.shape)} at batch={case.batch} N={case.max_instances}, "
            f"expected float32{list(want_shapes[name])}"
            for name, arr in (("logits", logits), ("attention", attention))
            if arr.shape != want_shapes[name] or arr.dtype != np.float32
        ]
        shape_problems += problems
        if logits.shape != e_logits.shape or attention.shape != e_attention.shape:
            row["error"] = problems[0] if problems else "output shapes differ from eager"
            continue
        if not (np.isfinite(logits).all() and np.isfinite(attention).all()):
            nonfinite.append(f"batch={case.batch} N={case.max_instances}")
        for name, got, want in (("logits", logits, e_logits), ("attention", attention, e_attention)):
            row[f"{name}_diff"] = diff = _worst(np.abs(got.astype(np.float64) - want))
            worst[name] = max(worst[name], diff)
            worst[f"{name}_excess"] = max(worst[f"{name}_excess"], _excess(got, want, tol))
        real = inputs[MASK]
        sums = np.where(real, attention, 0).astype(np.float64).sum(axis=1)
        row["attention_sum_error"] = _worst(np.abs(sums - 1))
        sum_err = max(sum_err, row["attention_sum_error"])
        pad_att = max(pad_att, _worst(np.abs(np.where(real, 0, attention))))
        if case.max_instances == 1:
            row["one_instance"] = True
            if not np.isfinite(logits).all():
                one_instance.append(f"non-finite logits at batch={case.batch}")
            if not np.allclose(attention, 1.0, atol=tol.attention_sum):
                one_instance.append(f"attention {attention.ravel().tolist()[:4]} instead of 1")
    timings["cases_s"] = time.perf_counter() - start

    ran = [c for c in cases if "logits_diff" in c]
    failed_runs = [c for c in cases if c.get("error")]
    checks.append(
        Check("runs", not failed_runs, detail=f"{len(cases) - len(failed_runs)}/{len(cases)} batches ran")
    )
    checks.append(
        Check("output_shapes", not shape_problems, detail="; ".join(shape_problems[:3]) or "as contract")
    )
    for name in ("logits", "attention"):
        checks.append(
            Check(
                f"parity_{name}",
                bool(ran) and worst[f"{name}_excess"] <= tol.parity_atol,
                worst[name] if ran else None,
                tol.parity_atol,
                f"max abs diff vs eager float32 over {len(ran)} batches"
                + (
                    f"; tolerance {tol.parity_atol:g} + {tol.parity_rtol:g}|eager|" if tol.parity_rtol else ""
                ),
            )
        )
    checks.append(
        Check("finite", bool(ran) and not nonfinite, detail="; ".join(nonfinite) or "all outputs finite")
    )
    planned = any(c.max_instances == 1 for c in plan.cases)
    single_ran = any(c.get("one_instance") for c in cases)
    checks.append(
        Check(
            "one_instance_bag",
            (single_ran and not one_instance) if planned else None,
            detail="; ".join(one_instance)
            or ("finite, attention 1" if single_ran else "did not run" if planned else "not in the plan"),
        )
    )
    checks.append(
        Check(
            "attention_normalised",
            bool(ran) and sum_err <= tol.attention_sum and pad_att == 0.0,
            sum_err if ran else None,
            tol.attention_sum,
            f"max |sum over real instances - 1|; max |attention on padding| = {_fmt(pad_att)} (must be 0)",
        )
    )

    start = time.perf_counter()
    checks.append(_attention_scan(run, plan.scan, D, input_names, rng, tol, errors))
    timings["scan_s"] = time.perf_counter() - start

    start = time.perf_counter()
    probes, pad_checks = _padding_probes(run, plan.padding, D, input_names, rng, tol, info, errors)
    timings["padding_s"] = time.perf_counter() - start
    checks += pad_checks
    timings["total_s"] = time.perf_counter() - start_all
    example = export.get("example_sizes")
    return VerificationReport(
        artifact=path.name,
        format=fmt,
        model_name=info.model_name,
        precision=precision,
        passed=all(c.passed is not False for c in checks),
        checks=checks,
        cases=cases,
        padding=probes,
        tolerances=asdict(tol),
        plan=plan.to_dict(),
        example_sizes=list(example) if example else None,
        errors=errors,
        versions=library_versions(),
        timings={k: round(v, 4) for k, v in timings.items()},
    )


#: padded instance slots per batch of the attention scan (small bags are scanned many to a batch).
_SCAN_SLOTS = 8192


def _attention_scan(
    run: Runner,
    sizes: Sequence[int],
    D: int,
    input_names: list[str],
    rng: np.random.Generator,
    tol: Tolerances,
    errors: list[str],
) -> Check:
    """Check that the attention of a bag of every size in ``sizes`` is a distribution over its real instances.

    Bags are packed in ascending size into batches of at most 8 bags and :data:`_SCAN_SLOTS` padded slots.
    """
    if not sizes:
        return Check("attention_scan", None, detail="not in the plan")
    bad: list[str] = []
    worst = 0.0
    batches: list[list[int]] = [[]]
    for n in sorted(sizes):
        current = batches[-1]
        if current and (len(current) == 8 or (len(current) + 1) * n > _SCAN_SLOTS):
            batches.append(current := [])
        current.append(int(n))
    for lengths in batches:
        inputs = _make_batch(lengths, max(lengths), D, input_names, rng)
        try:
            _, attention = run(inputs)
        except Exception as exc:  # noqa: BLE001 - a failing size is a finding, recorded
            errors.append(f"attention scan at sizes {_sizes(lengths)}: {first_line(exc, with_type=True)}")
            bad.append(f"sizes {_sizes(lengths)} failed to run")
            continue
        for row, n in enumerate(lengths):
            att = attention[row, :n].astype(np.float64)
            error = abs(att.sum() - 1) if np.isfinite(att).all() else float("inf")
            worst = max(worst, error)
            if not error <= tol.attention_sum or (att < 0).any():
                bad.append(f"N={n}: sum {att.sum():.4g}, min {att.min():.3g}")
    return Check(
        "attention_scan",
        not bad,
        worst,
        tol.attention_sum,
        (f"{len(sizes)} bag sizes {min(sizes)}..{max(sizes)}: "
         + ("each a distribution over its real instances" if not bad else "; ".join(bad[:4]))),
    )


def _padding_probes(
    run: Runner,
    probes: Sequence[PaddingProbe],
    D: int,
    input_names: list[str],
    rng: np.random.Generator,
    tol: Tolerances,
    info: ModelInfo,
    errors: list[str],
) -> tuple[list[dict[str, Any]], list[Check]]:
    """Run each probe's bag alone and padded inside a batch, on the artifact; rows and the two checks."""
    rows: list[dict[str, Any]] = []
    worst = {"logits": 0.0, "attention": 0.0}
    for probe in probes:
        row: dict[str, Any] = asdict(probe)
        rows.append(row)
        # the other bags fill the batch up to padded_to; with batch == 1 the probed bag is padded alone
        lengths = rng.integers(1, probe.padded_to + 1, size=probe.batch)
        lengths[0] = probe.padded_to
        where = probe.batch // 2
        lengths[where] = probe.n_instances
        batch = _make_batch(lengths.tolist(), probe.padded_to, D, input_names, rng)
        alone = {k: _one_bag(k, v, where, probe.n_instances) for k, v in batch.items()}
        try:
            a_logits, a_att = run(alone)
            b_logits, b_att = run(batch)
            logits_diff = _worst(np.abs(a_logits[0] - b_logits[where]))
            attention_diff = max(
                _worst(np.abs(a_att[0] - b_att[where, : probe.n_instances])),
                _worst(np.abs(b_att[where, probe.n_instances :])),
            )
        except Exception as exc:  # noqa: BLE001 - a failing probe is a finding, recorded
            row["error"] = first_line(exc, with_type=True)
            errors.append(f"padding probe {probe}: {row['error']}")
            continue
        row["logits_diff"], row["attention_diff"] = logits_diff, attention_diff
        for name, value in worst.items():
            worst[name] = max(value, row[f"{name}_diff"])
    ran = [r for r in rows if "logits_diff" in r]
    failed = len(rows) - len(ran)
    checks = []
    for name in ("logits", "attention"):
        value = worst[name] if ran else None
        if not info.padding_invariant:
            passed, detail = (
                None,
                f"declared not invariant: {info.padding_note or 'no note'} (measured, informational)",
            )
        else:
            passed = bool(ran) and not failed and worst[name] <= tol.padding
            detail = f"bag alone vs padded in a batch, {len(ran)}/{len(rows)} probes"
        checks.append(Check(f"padding_{name}", passed, value, tol.padding, detail))
    return rows, checks
