"""What the suite runs: one model in every form it is measured in, and the bags it is measured on.

:func:`prepare_model` builds a registered model at the suite's feature dimension, converts torchmil's model of the
same name to it where :func:`milsdk.models.from_torchmil` can (so both eager paths hold the same weights), and
exports it to ONNX and TorchScript, to int8 ONNX (uint8 weights, right on every CPU; int8 weights where this CPU has
VNNI / AMX) and, where this CPU has AMX / AVX-512 BF16, to bfloat16 TorchScript. :func:`make_bag` makes one bag
(features and grid coords, so that models using positions or a graph run too) and :func:`model_inputs` the padded arrays of the deployment contract for it, with
the graph the client would build.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from milsdk.export.bags import bag_batch as model_inputs
from milsdk.utils.cpu import BFLOAT16_FLAGS, EXACT_INT8_FLAGS, bfloat16_is_emulated, int8_sums_saturate

__all__ = [
    "BFLOAT16_PATH", "IN_PROCESS_BESIDE_TRITON", "INT8_WEIGHTS_PATH", "REDUCED_PATHS", "PreparedModel", "prepare_model",
    "make_bag", "model_inputs", "count_flops",
]

#: the suite's paths of the artifacts that need a CPU's fast kernels (``PreparedModel.reduced_paths``)
INT8_WEIGHTS_PATH = "onnxruntime int8 weights (MILClient)"
BFLOAT16_PATH = "TorchScript bfloat16 (MILClient)"
REDUCED_PATHS = (INT8_WEIGHTS_PATH, BFLOAT16_PATH)
#: the in-process onnxruntime client timed in the Triton paths' rounds: the base of their share of in-process
IN_PROCESS_BESIDE_TRITON = "onnxruntime (MILClient) beside Triton"

log = logging.getLogger(__name__)


@dataclass
class PreparedModel:
    """A model ready to be measured.

    Attributes:
        name: the registered name.
        model: the milsdk model (eval mode).
        onnx_path / torchscript_path / int8_path: its exported artifacts, int8 the ``cpu-int8`` profile's ONNX
            (None where the export failed; see ``notes``).
        reduced_paths: the artifacts this CPU has fast kernels for, by suite path: int8 weights (the
            ``cpu-int8-vnni`` profile's ONNX) where it has VNNI / AMX, the ``cpu-bf16`` profile's TorchScript
            where it has AMX / AVX-512 BF16 (:data:`REDUCED_PATHS`).
        torchmil_model: torchmil's model of the same name, or None where torchmil has none that runs on a bag.
        same_weights: whether ``torchmil_model`` holds the milsdk model's weights.
        notes: what could not be done and why, one line each.
    """

    name: str
    model: Any
    onnx_path: Path | None = None
    torchscript_path: Path | None = None
    int8_path: Path | None = None
    reduced_paths: dict[str, Path] = field(default_factory=dict)
    torchmil_model: Any = None
    same_weights: bool = False
    torchmil_call: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)


def _torchmil_class(name: str) -> Any:
    try:
        import torchmil.models as tm
    except ModuleNotFoundError:
        return None
    return getattr(tm, name, None)


def prepare_model(name: str, dim: int, out_dir: Path, seed: int = 0, small: bool = False) -> PreparedModel:
    """Build, convert and export one registered model (see the module docstring).

    Args:
        name: a name from :func:`milsdk.models.list_models`.
        dim: D, the feature dimension.
        out_dir: where the artifacts are written.
        small: build the model's declared test configuration (``test_config``, for smoke runs) instead of its
            defaults (what a user gets from ``create_model(name)``).
    """
    import torch

    from milsdk.export import export_onnx, export_torchscript, quantize_onnx
    from milsdk.models import create_model, from_torchmil, get_model_class

    config = dict(get_model_class(name).test_config) if small else {}

    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    reference, model, same = None, None, False
    cls = _torchmil_class(name)
    call: tuple[str, ...] = ()
    if cls is None:
        notes.append("torchmil 1.0.2 has no model of this name")
    else:
        params = inspect.signature(cls.forward).parameters
        required = [p for p, v in params.items() if p not in ("self", "X") and v.default is inspect.Parameter.empty]
        if required:
            notes.append(f"torchmil's forward needs {', '.join(required)}: not measured eager in torchmil")
        else:
            torch.manual_seed(seed)
            try:
                reference = cls(in_shape=(dim,), **config).eval()
            except Exception as exc:  # noqa: BLE001 - a reference that cannot be built is reported, not fatal
                notes.append(f"torchmil {name}(in_shape=({dim},), **{config}) fails: {str(exc).splitlines()[0]}")
            call = ("mask",) if "mask" in params else ()
    if reference is not None:
        try:
            model = from_torchmil(reference, name, in_shape=(dim,), **config)
            same = True
        except Exception as exc:  # noqa: BLE001 - then each library keeps its own initialisation
            notes.append(f"weights not converted ({str(exc).splitlines()[0]}): torchmil runs with its own init")
    if model is None:
        torch.manual_seed(seed)
        model = create_model(name, in_shape=(dim,), **config)
    model = model.eval()
    prepared = PreparedModel(name, model, torchmil_model=reference, same_weights=same, torchmil_call=call,
                             notes=notes)
    for kind, export in (("onnx", export_onnx), ("torchscript", export_torchscript)):
        suffix = ".onnx" if kind == "onnx" else ".pt"
        try:
            path = export(model, out_dir / f"{name}{suffix}")
        except Exception as exc:  # noqa: BLE001 - an export that fails is a row in the report
            notes.append(f"{kind} export failed: {str(exc).splitlines()[0]}")
            continue
        setattr(prepared, f"{kind}_path", Path(path))
    if bfloat16_is_emulated():
        notes.append(f"{BFLOAT16_PATH} not measured: this CPU has no {' / '.join(BFLOAT16_FLAGS)}")
    else:
        try:
            path = export_torchscript(model, out_dir / f"{name}_bf16.pt", precision="bfloat16")
            prepared.reduced_paths[BFLOAT16_PATH] = Path(path)
        except Exception as exc:  # noqa: BLE001 - same
            notes.append(f"bfloat16 export failed: {str(exc).splitlines()[0]}")
    if prepared.onnx_path is None:
        notes.append("int8 not exported: the float32 ONNX export failed")
        return prepared
    # the int8 exports of the float32 file: the same graph, without tracing the model again
    weights = {"uint8": (None, f"{name}_int8.onnx")}
    if int8_sums_saturate():
        notes.append(f"{INT8_WEIGHTS_PATH} not measured: this CPU has no {' / '.join(EXACT_INT8_FLAGS)}")
    else:
        weights["int8"] = (INT8_WEIGHTS_PATH, f"{name}_int8_weights.onnx")
    for kind, (path_name, file_name) in weights.items():
        try:
            path = Path(quantize_onnx(prepared.onnx_path, out_dir / file_name, int8_weights=kind))
        except Exception as exc:  # noqa: BLE001 - same
            notes.append(f"int8 export ({kind} weights) failed: {str(exc).splitlines()[0]}")
            continue
        if path_name is None:
            prepared.int8_path = path
        else:
            prepared.reduced_paths[path_name] = path
    return prepared


def make_bag(n: int, dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One bag: ``features`` (n, dim) float32 standard normal and ``coords`` (n, 2) float32, the cells of the
    smallest square grid that holds n patches in a random order (as tiles of a slide)."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    cells = rng.permutation(side * side)[:n]
    coords = np.stack([cells // side, cells % side], axis=1).astype(np.float32)
    return {"features": rng.standard_normal((n, dim), dtype=np.float32), "coords": coords}


def count_flops(fn: Any) -> int:
    """FLOPs of one call of ``fn()`` as counted by :class:`torch.utils.flop_counter.FlopCounterMode`: the
    matrix products (mm, addmm, bmm, baddbmm), convolutions and scaled-dot-product attention that torch runs,
    2 FLOPs per multiply-add. Element-wise work (softmax, activations, norms) is not counted: it is memory-bound
    and small next to the products, and the GEMMs are what the ceiling measures."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())
