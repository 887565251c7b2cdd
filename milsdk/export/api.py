"""Export a checkpoint: rebuild the model, export every requested format, verify each artifact, and only then
put the artifacts (and the Triton model) in place. An interrupted or failed export leaves nothing written."""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from milsdk.contract import ModelInfo
from milsdk.errors import ExportError, VerificationError
from milsdk.export.accuracy import AccuracyReport, accuracy_report, held_out_bags, synthetic_bags, write_accuracy_report
from milsdk.export.artifact import read_model_info
from milsdk.export.files import check_folder_target, place_tree
from milsdk.export.onnx import export_onnx
from milsdk.export.profiles import FORMATS, ExportProfile, load_profile
from milsdk.export.signature import model_info
from milsdk.export.torchscript import export_torchscript
from milsdk.export.triton import build_triton_model, check_model_name
from milsdk.export.verify import VerificationPlan, VerificationReport, verify_export, write_reports

__all__ = ["ARTIFACT_NAMES", "ExportResult", "ExportedArtifact", "default_name", "export_checkpoint"]

#: file name of each format inside the output folder.
ARTIFACT_NAMES = {"onnx": "model.onnx", "torchscript": "model.pt"}


@dataclass
class ExportedArtifact:
    """One verified artifact in the output folder."""

    format: str
    path: Path
    size_bytes: int
    export_s: float
    verify_s: float
    report: VerificationReport


@dataclass
class ExportResult:
    """What :func:`export_checkpoint` wrote."""

    name: str
    output_dir: Path
    artifacts: list[ExportedArtifact]
    info: ModelInfo
    profile: ExportProfile
    reports: tuple[Path, Path]
    triton_dir: Path | None = None
    #: the accuracy report of a reduced-precision export (written as accuracy.json / accuracy.md), else None
    accuracy: AccuracyReport | None = None

    def table(self) -> str:
        """A short text table: artifact, size, parity error, padding-invariance error, time."""
        rows = [("artifact", "size", "parity err", "padding err", "time")]
        for a in self.artifacts:
            padding = a.report.padding_error
            declared = a.report.check("padding_logits").passed is None
            rows.append(
                (
                    str(a.path),
                    f"{a.size_bytes / 1e6:.2f} MB",
                    f"{a.report.parity_error:.2e}" if a.report.parity_error is not None else "-",
                    ("n/a (declared)" if declared else f"{padding:.2e}") if padding is not None else "-",
                    f"{a.export_s:.1f}s + {a.verify_s:.1f}s verify",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def default_name(ckpt_path: str | os.PathLike) -> str:
    """Model / folder name from a checkpoint file name: ``runs/ABMIL Camelyon.ckpt`` -> ``abmil_camelyon``."""
    stem = Path(ckpt_path).stem
    return re.sub(r"[^a-z0-9_.-]+", "_", stem.lower()).strip("_.-") or "model"


def _resolve(
    profile: str | os.PathLike | ExportProfile | None, formats: Sequence[str] | None, triton: bool
) -> tuple[ExportProfile, tuple[str, ...]]:
    prof = profile if isinstance(profile, ExportProfile) else load_profile(profile)
    chosen = tuple(dict.fromkeys(formats)) if formats else prof.formats
    for fmt in chosen:
        if fmt not in FORMATS:
            raise ExportError(f"unknown format {fmt!r}; formats are {', '.join(FORMATS)}")
    if triton and prof.triton_format not in chosen:
        raise ExportError(
            f"profile {prof.name!r} serves Triton with the {prof.triton_backend} backend, which needs the "
            f"{prof.triton_format} format; add it to the formats (or use --format all)"
        )
    return prof, chosen


def export_checkpoint(
    ckpt_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    formats: Sequence[str] | None = None,
    *,
    triton_repo: str | os.PathLike | None = None,
    name: str | None = None,
    version: int = 1,
    opset: int | None = None,
    max_batch_size: int | None = None,
    profile: str | os.PathLike | ExportProfile | None = None,
    plan: VerificationPlan | None = None,
    example_sizes: tuple[int, int] = (2, 16),
    progress: Callable[[str], None] | None = None,
    accuracy_bags: Sequence[str | os.PathLike] | None = None,
) -> ExportResult:
    """Export and verify a checkpoint; write the artifacts only if every verification passes.

    Writes ``output_dir/model.onnx`` and/or ``model.pt`` plus ``verification.json`` / ``verification.md``;
    with ``triton_repo`` also ``triton_repo/<name>/config.pbtxt`` and ``triton_repo/<name>/<version>/...`` for
    the profile's Triton backend. Everything is built and verified in a temporary folder first.

    Args:
        ckpt_path: a milsdk checkpoint (``save_checkpoint``).
        output_dir: folder for the artifacts (created; existing files of the same names are replaced).
        formats: subset of ("onnx", "torchscript"); default the profile's.
        triton_repo: Triton model repository to add the model to, or None.
        name: model name (Triton model name); default from the checkpoint file name.
        version: Triton model version (>= 1).
        opset: ONNX opset; default the profile's (18).
        max_batch_size: Triton max_batch_size; default the profile's (8).
        profile: profile name, TOML path or ExportProfile; default "cpu".
        plan: verification plan; default :meth:`VerificationPlan.default` (batch 1..8, bag 1..5000).
        example_sizes: (batch, bag size) of the export example, both >= 2.
        progress: called with a short message at each step.
        accuracy_bags: held-out feature files or folders for the accuracy report of a reduced-precision
            (int8 / float16 / bfloat16) export; default synthetic bags (:mod:`milsdk.export.accuracy`).

    Returns:
        ExportResult (paths, sizes, timings, reports).

    Raises:
        CheckpointError: missing, corrupt or non-milsdk checkpoint (nothing is written).
        ExportError: bad options or profile, an output target that cannot be written (an existing file where a
            folder must go; checked before any work), a model that does not fit the signature, an exporter
            failure.
        VerificationError: an artifact failed verification, or a reduced-precision one its accuracy limits
            (``report`` holds the reports; nothing is written).
        BagError: an accuracy bag file that cannot be used (before any export work).
    """
    from milsdk.utils.checkpoint import read_checkpoint

    say = progress or (lambda message: None)
    prof, chosen = _resolve(profile, formats, triton_repo is not None)
    opset = int(opset if opset is not None else prof.opset)
    max_batch_size = int(max_batch_size if max_batch_size is not None else prof.max_batch_size)
    if max_batch_size < 1 or int(version) < 1:
        raise ExportError(f"max batch size and version must be >= 1, got {max_batch_size} and {version}")
    name = check_model_name(name or default_name(ckpt_path))
    # Both targets are checked before the minutes of export and verification, and before either is written:
    # a target that cannot be written must cost nothing and leave the other untouched.
    reports = ("verification.json", "verification.md")
    check_folder_target(output_dir, "output folder", (*(ARTIFACT_NAMES[f] for f in chosen), *reports))
    if triton_repo is not None:
        check_folder_target(triton_repo, "Triton repository")
        check_folder_target(Path(triton_repo) / name / str(int(version)), "Triton model folder")

    ckpt = read_checkpoint(ckpt_path)
    model = ckpt.build_model()
    # a model config without an ONNX graph (SETMIL grid="all_cells") gets the profile's other formats when the
    # caller named none; asked for ONNX explicitly, or for a Triton backend that serves ONNX, it is one line
    unsupported = getattr(model, "onnx_unsupported", None)
    if unsupported and formats is None and triton_repo is None and "onnx" in chosen and len(chosen) > 1:
        chosen = tuple(f for f in chosen if f != "onnx")
        say(f"no ONNX for this model ({unsupported}); exporting {', '.join(chosen)}")
    info = model_info(
        model, ckpt.metadata, extra={"export": {"checkpoint": Path(ckpt_path).name, "profile": prof.name}}
    )
    say(
        f"read {ckpt_path}: {info.model_name}, D={info.feature_dim}, {info.n_classes} output(s); "
        f"profile {prof.name}"
    )
    plan = plan or VerificationPlan.default()
    accuracy_input, accuracy = None, None
    # the accuracy report judges the artifact that serves: the ONNX file when there is one, else TorchScript
    accuracy_format = "onnx" if "onnx" in chosen else chosen[0]
    if prof.precision != "float32" or prof.features_dtype != "float32":
        accuracy_input = (
            (f"held-out: {', '.join(map(str, accuracy_bags))}", held_out_bags(accuracy_bags, info))
            if accuracy_bags else ("synthetic Gaussian (pass held-out feature files for a meaningful report)",
                                   synthetic_bags(info))
        )
    with tempfile.TemporaryDirectory(prefix="milsdk-export-") as stage_root:
        stage = Path(stage_root) / "out"
        stage.mkdir()
        exported: list[ExportedArtifact] = []
        for fmt in chosen:
            path = stage / ARTIFACT_NAMES[fmt]
            say(f"exporting {fmt} ({prof.precision}) -> {path.name}")
            start = time.perf_counter()
            common: dict[str, Any] = {
                "precision": prof.precision,
                "features_dtype": prof.features_dtype,
                "example_batch": example_sizes[0],
                "example_instances": example_sizes[1],
                "info": info,
            }
            if fmt == "onnx":
                export_onnx(model, path, opset=opset, int8_weights=prof.int8_weights, **common)
            else:
                export_torchscript(model, path, **common)
            export_s = time.perf_counter() - start
            say(
                f"verifying {path.name}: {len(plan.cases)} batches, {len(plan.padding)} padding probes, "
                f"attention scan of {len(plan.scan)} bag sizes"
            )
            start = time.perf_counter()
            report = verify_export(path, model, plan=plan)
            exported.append(
                ExportedArtifact(
                    fmt, path, path.stat().st_size, export_s, time.perf_counter() - start, report
                )
            )
        reports = [a.report for a in exported]
        failed = [r for r in reports if not r.passed]
        if failed:
            raise VerificationError(
                f"{name}: nothing written, " + "; ".join(r.summary() for r in failed), report=reports
            )
        json_path, md_path = write_reports(reports, stage)
        extra_files = [json_path, md_path]
        if accuracy_input is not None:
            source, bags = accuracy_input
            artifact_name = ARTIFACT_NAMES[accuracy_format]
            say(f"accuracy of {artifact_name} ({prof.precision}) against float32 on {len(bags)} bags")
            accuracy = accuracy_report(
                stage / artifact_name, model, bags, bags_source=source,
                max_probability_change=prof.max_probability_change,
                min_attention_spearman=prof.min_attention_spearman,
                attention_min_instances=prof.attention_min_instances,
            )
            if not accuracy.passed:
                raise VerificationError(f"{name}: nothing written, {accuracy.summary()}", report=reports)
            extra_files += write_accuracy_report(accuracy, stage)
            say(accuracy.summary())

        triton_stage = None
        if triton_repo is not None:
            say(f"writing Triton model {name} (backend {prof.triton_backend}, version {version})")
            served = stage / ARTIFACT_NAMES[prof.triton_format]
            triton_stage = build_triton_model(
                Path(stage_root) / "triton" / name,
                {prof.triton_format: served},
                read_model_info(served),
                backend=prof.triton_backend,
                version=int(version),
                max_batch_size=max_batch_size,
                instance_groups=prof.instance_groups,
                dynamic_batching=prof.dynamic_batching,
                features_dtype=prof.features_dtype,
                extra_files=tuple(extra_files),
            )
        output_dir = place_tree(stage, output_dir)
        triton_dir = place_tree(triton_stage, Path(triton_repo) / name) if triton_stage is not None else None
    for a in exported:
        a.path = output_dir / a.path.name
    say(f"wrote {output_dir}" + (f" and {triton_dir}" if triton_dir else ""))
    return ExportResult(
        name=name,
        output_dir=output_dir,
        artifacts=exported,
        info=info,
        profile=prof,
        reports=(output_dir / json_path.name, output_dir / md_path.name),
        triton_dir=triton_dir,
        accuracy=accuracy,
    )
