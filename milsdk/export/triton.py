"""Triton model repository writer and checker.

``write_triton_model`` lays out one model::

    REPO/<name>/config.pbtxt
    REPO/<name>/<version>/model.onnx            backend "onnxruntime": platform "onnxruntime_onnx"
    REPO/<name>/<version>/model.pt              backend "pytorch":     platform "pytorch_libtorch"
    REPO/<name>/<version>/model.py + model.onnx backend "python":      backend "python" (onnxruntime inside)

with the deployment contract's inputs and outputs: the batch axis is implicit (``max_batch_size`` > 0), the
bag axis is -1, D and C are fixed. The milsdk metadata (ModelInfo JSON) is also stored as the config parameter
``milsdk.json``, so a client can read it from the server (``get_model_config``) for every backend.

An ONNX model's repository copy also has the ``features_check`` output, (B, 1) float32: each bag's NaN/inf test,
computed in the graph on the first layer it computes anyway (:mod:`milsdk.serving.backends.features_check`; the
graph's logits and attention are untouched). A client that finds it in the config does not scan each bag before
sending it: one read pass over the bag less, 5.7 of 55 ms for an ABMIL bag of 16,000 x 1024 over shared memory
on 2 cores. The verified artifact itself keeps the deployment signature; a model whose weights live in external
files is copied as it is, without the output.

PyTorch backend naming: Triton's libtorch backend binds config inputs to the TorchScript ``forward`` arguments
by name when every config input name is a forward argument (its FORWARD_ARGUMENT convention), and outputs
whose names lack the ``<name>__<index>`` form in config order (STRICT_CONFIG_ORDERING; the server logs a
one-line warning). The contract names therefore work unchanged: ``forward(features, mask)`` returns ``(logits,
attention)`` in the config's order. Its input count must equal the forward's argument count, which is why the
deployment module's forward takes exactly the model's inputs.

Configs are built and read as Triton's own ``ModelConfig`` message (:mod:`milsdk.export.pbtxt`):
``read_triton_config`` parses a config.pbtxt with Triton's schema (a field or value Triton would refuse is an
error naming the line and field), and ``check_triton_model`` compares it field by field with the artifact it
serves.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from milsdk.contract import FEATURES_CHECK, METADATA_KEY, ModelInfo
from milsdk.errors import ArtifactError, ExportError
from milsdk.export.files import place_tree
from milsdk.export.pbtxt import model_config_schema, model_config_text, parse_model_config
from milsdk.export.profiles import TRITON_BACKENDS, InstanceGroup
from milsdk.export.spec import BATCH_DIM, TensorSpec, signature_specs

#: the repository copy's extra output (module docstring): (B, 1), the axis after the implicit batch one
FEATURES_CHECK_SPEC = TensorSpec(FEATURES_CHECK, "float32", (BATCH_DIM, 1))

__all__ = [
    "FEATURES_CHECK_SPEC",
    "TRITON_DTYPES",
    "build_triton_model",
    "check_model_name",
    "check_triton_model",
    "python_model_source",
    "read_triton_config",
    "triton_config_text",
    "write_triton_model",
]

#: numpy dtype name -> Triton data type.
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bool": "TYPE_BOOL", "int64": "TYPE_INT64"}
#: backend -> ((config field, value), files in the version folder).
_LAYOUT = {
    "onnxruntime": (("platform", "onnxruntime_onnx"), ("model.onnx",)),
    "pytorch": (("platform", "pytorch_libtorch"), ("model.pt",)),
    "python": (("backend", "python"), ("model.py", "model.onnx")),
}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a usable Triton model / folder name (letters, digits, ``_ . -``).

    Raises:
        ExportError: otherwise.
    """
    if not _NAME.match(name) or name in (".", ".."):
        raise ExportError(f"model name {name!r} may use only letters, digits, '_', '.' and '-'")
    return name


def python_model_source() -> str:
    """The Python-backend ``model.py`` (see :mod:`milsdk.export.triton_python_model`)."""
    return (Path(__file__).parent / "triton_python_model.py").read_text()


def _add_tensor(entries: Any, spec: TensorSpec) -> None:
    """Append ``spec`` to a config's ``input`` / ``output`` list: the batch axis implicit, -1 for symbolic axes."""
    if spec.shape[0] != BATCH_DIM:
        raise ExportError(f"Triton config: {spec.name} has no leading batch axis ({spec.describe()})")
    schema = model_config_schema()
    entries.add(
        name=spec.name,
        data_type=schema.DataType.Value(TRITON_DTYPES[spec.dtype]),
        dims=[-1 if isinstance(d, str) else int(d) for d in spec.shape[1:]],
    )


def triton_config_text(
    name: str,
    info: ModelInfo,
    *,
    backend: str = "onnxruntime",
    max_batch_size: int = 8,
    instance_groups: Sequence[InstanceGroup] = (InstanceGroup(),),
    dynamic_batching: bool = False,
    features_dtype: str = "float32",
    features_check: bool = False,
) -> str:
    """The config.pbtxt of one model (see the module docstring for the layout), built as Triton's
    ``ModelConfig`` message and written in protobuf text format.

    Args:
        name: Triton model name (the folder name).
        info: the artifact's metadata (inputs, D, C).
        backend: "onnxruntime", "pytorch" or "python".
        max_batch_size: largest batch B a request may carry (>= 1; the batch axis is then implicit in dims).
        instance_groups: where instances run (KIND_CPU / KIND_GPU).
        dynamic_batching: enable Triton's dynamic batcher (off by default, see the comment it writes).
        features_dtype: dtype of the features input.
        features_check: the model also outputs ``features_check`` (B, 1) (module docstring).
    """
    if backend not in _LAYOUT:
        raise ExportError(f"Triton backend must be one of {', '.join(_LAYOUT)}, got {backend!r}")
    if max_batch_size < 1:
        raise ExportError(f"max_batch_size must be >= 1, got {max_batch_size}")
    schema = model_config_schema()
    config = schema.ModelConfig(name=name, max_batch_size=int(max_batch_size))
    field, value = _LAYOUT[backend][0]
    setattr(config, field, value)
    inputs, outputs = signature_specs(info, features_dtype)
    for spec in inputs:
        _add_tensor(config.input, spec)
    for spec in outputs + ([FEATURES_CHECK_SPEC] if features_check else []):
        _add_tensor(config.output, spec)
    for g in instance_groups:
        config.instance_group.add(
            count=g.count, kind=schema.ModelInstanceGroup.Kind.Value(f"KIND_{g.kind.upper()}"), gpus=list(g.gpus)
        )
    comments = [
        (
            f"Written by milsdk {info.milsdk_version} (milsdk export): {info.model_name}, "
            f"D={info.feature_dim}, C={info.n_classes}."
        )
    ]
    if dynamic_batching:
        config.dynamic_batching.SetInParent()
        comments.append(
            "Dynamic batching merges only requests whose bags have the same N; the client still pads and batches."
        )
    else:
        comments.append(
            "No dynamic_batching: Triton's dynamic batcher merges only requests of identical shape, and\n"
            "bags differ in N, so it would rarely merge anything; the milsdk client pads and batches bags."
        )
    config.parameters[METADATA_KEY].string_value = info.to_json()
    if backend == "onnxruntime":
        arenas = "cpu:0" + (";gpu:0" if any(g.kind == "gpu" for g in instance_groups) else "")
        comments.append("The onnxruntime arena grows with every new bag size and never shrinks unless told to.")
        config.parameters["memory.enable_memory_arena_shrinkage"].string_value = arenas
    return model_config_text(config, comments)


def build_triton_model(
    model_dir: str | os.PathLike,
    artifacts: dict[str, str | os.PathLike],
    info: ModelInfo,
    *,
    backend: str = "onnxruntime",
    version: int = 1,
    max_batch_size: int = 8,
    instance_groups: Sequence[InstanceGroup] = (InstanceGroup(),),
    dynamic_batching: bool = False,
    features_dtype: str = "float32",
    extra_files: Sequence[str | os.PathLike] = (),
) -> Path:
    """Write one Triton model folder ``model_dir`` (its name is the model name) and check it.

    Args: as :func:`write_triton_model`.

    Returns:
        ``model_dir``.

    Raises:
        ExportError: bad name / version / backend, a missing artifact, or a config that does not match it.
    """
    model_dir = Path(model_dir)
    name = check_model_name(model_dir.name)
    if int(version) < 1:
        raise ExportError(f"Triton model version must be >= 1, got {version}")
    if backend not in TRITON_BACKENDS:
        raise ExportError(f"Triton backend must be one of {', '.join(TRITON_BACKENDS)}, got {backend!r}")
    fmt = TRITON_BACKENDS[backend]
    if fmt not in artifacts:
        raise ExportError(f"Triton backend {backend!r} serves a {fmt} artifact, and none was exported")
    version_dir = model_dir / str(int(version))
    version_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        shutil.copyfile(artifacts[fmt], version_dir / "model.pt")
        checks_features = False
    else:
        checks_features = _copy_with_features_check(Path(artifacts[fmt]), version_dir / "model.onnx")
    text = triton_config_text(
        name,
        info,
        backend=backend,
        max_batch_size=max_batch_size,
        instance_groups=instance_groups,
        dynamic_batching=dynamic_batching,
        features_dtype=features_dtype,
        features_check=checks_features,
    )
    (model_dir / "config.pbtxt").write_text(text)
    if backend == "python":
        (version_dir / "model.py").write_text(python_model_source())
    for extra in extra_files:
        shutil.copyfile(extra, version_dir / Path(extra).name)
    problems = check_triton_model(model_dir)
    if problems:
        raise ExportError(f"Triton config for {name} does not match its artifact: {problems[0]}")
    return model_dir


def _copy_with_features_check(source: Path, target: Path) -> bool:
    """Copy an ONNX artifact into a version folder with the ``features_check`` output (B, 1) added (module
    docstring); True when it was added, False when the file was copied as it is."""
    import onnx

    from milsdk.serving.backends.features_check import attach_features_check_if_possible

    proto = onnx.load_model(str(source), load_external_data=False)
    if attach_features_check_if_possible(proto, column=True) is None:
        shutil.copyfile(source, target)
        return False
    onnx.save_model(proto, str(target))
    return True


def write_triton_model(
    repo: str | os.PathLike,
    name: str,
    artifacts: dict[str, str | os.PathLike],
    info: ModelInfo,
    **options: Any,
) -> Path:
    """Write ``REPO/<name>/config.pbtxt`` and ``REPO/<name>/<version>/`` for one exported model.

    The model folder is built in a temporary folder and checked (:func:`check_triton_model`), then moved into
    the
    repository: an existing model keeps its other versions; the same version is replaced file by file.

    Args:
        repo: model repository folder (created if needed).
        name: Triton model name (letters, digits, ``_ . -``).
        artifacts: {"onnx": path, "torchscript": path}: the verified artifacts; the backend picks its format.
        info: the artifact's metadata (stored as the ``milsdk.json`` parameter).
        **options: ``backend``, ``version`` (>= 1), ``max_batch_size``, ``instance_groups``,
            ``dynamic_batching``,
            ``features_dtype`` (see :func:`triton_config_text`), ``extra_files`` (copied into the version
            folder, e.g. verification.json / verification.md).

    Returns:
        The model folder ``REPO/<name>``.
    """
    with tempfile.TemporaryDirectory(prefix="milsdk-triton-") as stage:
        model_dir = build_triton_model(Path(stage) / name, artifacts, info, **options)
        return place_tree(model_dir, Path(repo) / name)


def read_triton_config(path: str | os.PathLike) -> Any:
    """Parse a config.pbtxt with Triton's schema (:func:`milsdk.export.pbtxt.parse_model_config`): a
    ``ModelConfig`` message, ``cfg.name == "abmil"``, ``list(cfg.input[0].dims) == [-1, 1024]``.

    Raises:
        ArtifactError: missing file, or text Triton would refuse (naming the line and field).
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    return parse_model_config(path.read_text(), source=str(path))


def _compare_tensors(kind: str, config: Any, specs: list[TensorSpec]) -> list[str]:
    schema = model_config_schema()
    problems = []
    names = [t.name for t in config]
    if names != [s.name for s in specs]:
        return [f"{kind}s {names} != artifact {[s.name for s in specs]}"]
    for entry, spec in zip(config, specs):
        dtype = schema.DataType.Name(entry.data_type)
        if dtype != TRITON_DTYPES.get(spec.dtype):
            problems.append(f"{kind} {spec.name!r} data_type {dtype} != artifact {spec.dtype}")
        if not isinstance(spec.shape[0], str):
            problems.append(
                f"{kind} {spec.name!r}: artifact batch axis is fixed ({spec.shape[0]}), not dynamic"
            )
        want = [-1 if isinstance(d, str) else d for d in spec.shape[1:]]
        if list(entry.dims) != want:
            problems.append(f"{kind} {spec.name!r} dims {list(entry.dims)} != artifact {want}")
    return problems


def check_triton_model(model_dir: str | os.PathLike) -> list[str]:
    """Compare ``model_dir/config.pbtxt`` field by field with the artifact of each version folder.

    Checked: name = folder name; platform / backend and the files it needs; max_batch_size >= 1; inputs and
    outputs (names in order, data types, dims = the artifact's dims after the implicit batch axis, -1 where
    the artifact's axis is symbolic); instance kinds; the ``milsdk.json`` parameter = the artifact's metadata.
    ONNX artifacts are read from the graph; TorchScript ones from their forward schema and metadata.

    Returns:
        Problems, one line each (empty when the model is consistent).
    """
    from milsdk.export.artifact import describe_artifact

    model_dir = Path(model_dir)
    cfg = read_triton_config(model_dir / "config.pbtxt")
    schema = model_config_schema()
    problems: list[str] = []
    if cfg.name != model_dir.name:
        problems.append(f"name {cfg.name!r} != folder {model_dir.name!r}")
    backend = {"onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "pytorch"}.get(cfg.platform)
    if cfg.backend == "python" and not cfg.platform:
        backend = "python"
    if backend is None:
        return problems + [f"unknown platform/backend {cfg.platform or cfg.backend!r}"]
    if cfg.max_batch_size < 1:
        problems.append(f"max_batch_size {cfg.max_batch_size} must be >= 1 (implicit batch axis)")
    for group in cfg.instance_group:
        kind = schema.ModelInstanceGroup.Kind.Name(group.kind)
        if kind not in ("KIND_CPU", "KIND_GPU"):
            problems.append(f"instance_group kind {kind!r} is not KIND_CPU / KIND_GPU")
    params = {key: value.string_value for key, value in cfg.parameters.items()}
    versions = [d for d in sorted(model_dir.iterdir()) if d.is_dir() and d.name.isdigit()]
    if not versions:
        problems.append("no version folder (e.g. 1/)")
    for version in versions:
        for needed in _LAYOUT[backend][1]:
            if not (version / needed).is_file():
                problems.append(f"{version.name}/{needed} is missing for backend {backend!r}")
        artifact = version / ("model.pt" if backend == "pytorch" else "model.onnx")
        if not artifact.is_file():
            continue
        try:
            desc = describe_artifact(artifact)
        except ArtifactError as exc:
            problems.append(str(exc))
            continue
        problems += _compare_tensors("input", cfg.input, desc.inputs)
        problems += _compare_tensors("output", cfg.output, desc.outputs)
        if params.get(METADATA_KEY) is not None and json.loads(params[METADATA_KEY]) != json.loads(
            desc.info.to_json()
        ):
            problems.append(
                f"parameter {METADATA_KEY!r} differs from {version.name}/{artifact.name}'s metadata"
            )
        if [s.name for s in desc.inputs] != list(desc.info.inputs):
            problems.append(
                f"{version.name}/{artifact.name} inputs differ from its metadata's {desc.info.inputs}"
            )
    return problems
