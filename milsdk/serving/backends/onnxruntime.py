"""In-process backend: an exported ``model.onnx`` run by onnxruntime (the embedded default)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from milsdk.contract import ATTENTION, FEATURES_CHECK, LOGITS, METADATA_KEY, ModelInfo
from milsdk.errors import ArtifactError, ServingError
from milsdk.serving.backends import first_line
from milsdk.serving.float16_cast import to_float16
from milsdk.utils.cpu import EXACT_INT8_FLAGS, int8_sums_saturate
from milsdk.utils.onnx_external_data import check_external_data

if TYPE_CHECKING:
    import onnx

__all__ = ["OnnxRuntimeBackend", "PREFERRED_PROVIDERS", "choose_providers", "int8_weight_products"]

log = logging.getLogger(__name__)

#: execution providers in order of preference; the first ones installed are used, CPU always last.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

# onnxruntime type strings of the inputs the client may have to cast to (e.g. a float16 export).
_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(bool)": np.bool_,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def choose_providers(available: Sequence[str]) -> list[str]:
    """The execution providers to use, most preferred first: those of :data:`PREFERRED_PROVIDERS` in
    ``available`` (TensorRT, then CUDA, then CPU, which is always last)."""
    chosen = [p for p in PREFERRED_PROVIDERS if p in available]
    return chosen if "CPUExecutionProvider" in chosen else [*chosen, "CPUExecutionProvider"]


def int8_weight_products(graph: onnx.GraphProto, outer_int8: frozenset[str] = frozenset()) -> list[str]:
    """The integer matrix products (``MatMulInteger``, ``DynamicQuantizeMatMul``; Scan / Loop / If bodies
    included) whose weight, input B, is an int8 initializer of the graph or of a graph enclosing it.

    Returns:
        Their node names (the first output's name for an unnamed node).
    """
    import onnx

    int8 = outer_int8 | {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    found = []
    for node in graph.node:
        if node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") and len(node.input) > 1 and node.input[1] in int8:
            found.append(node.name or node.output[0])
        for attr in node.attribute:
            for body in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                found += int8_weight_products(body, frozenset(int8))
    return found


class OnnxRuntimeBackend:
    """Runs ``model.onnx`` with onnxruntime.

    Args:
        path: the exported file; its ``metadata_props`` must hold the milsdk ``ModelInfo``.
        providers: execution providers, most preferred first; None = those of :data:`PREFERRED_PROVIDERS` that
            are installed (TensorRT, CUDA, then CPU).
        intra_op_threads: threads inside one operator (0 = onnxruntime's default, one per core).
        inter_op_threads: threads across independent operators (0 = default).
        shrink_arena: release the memory arena's unused regions after a run whose batch is at most half the
            largest one since the last release. Bag sizes vary, and onnxruntime's arena keeps the peak of every
            shape it has seen; releasing keeps memory near the current batch's need. Releasing after *every* run
            would make the next run of the same size fault its buffers in again (12% slower for one ABMIL bag of
            100,000 x 1024 here), so runs of similar sizes keep the arena warm.
        features_check: add the ``features_check`` output to the loaded graph (the file is not changed), so
            that the client's NaN/inf test of each bag costs ~1% of a run instead of a scan of the bag
            (:mod:`milsdk.serving.backends.features_check`).
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        shrink_arena: bool = True,
        features_check: bool = True,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if providers is None:
            providers = choose_providers(ort.get_available_providers())
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(intra_op_threads)
        options.inter_op_num_threads = int(inter_op_threads)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The pool's threads spin inside a run (short operators stay fast) but stop when it returns: spinning on
        # after a run takes a core from the work between runs (checking the next bag, another library's pool in
        # the same process); the next bag's one-pass check took twice as long behind a spinning pool here.
        options.add_session_config_entry("session.force_spinning_stop", "1")
        check_external_data(self.path)  # before onnxruntime reads any file the model names
        proto = self._load_graph()
        if proto is not None:
            self._warn_if_int8_weights_saturate(proto)
        graph = self._graph_with_features_check(proto) if features_check and proto is not None else None
        #: the graph computes each bag's NaN/inf test (milsdk.serving.backends.features_check)
        self.checks_features = graph is not None
        try:
            self.session = ort.InferenceSession(
                graph if graph is not None else str(self.path), sess_options=options, providers=list(providers)
            )
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable or invalid files
            raise ArtifactError(f"{self.path}: onnxruntime cannot load it ({first_line(exc)})") from None
        self._outputs = [LOGITS, ATTENTION] + ([FEATURES_CHECK] if self.checks_features else [])
        self.providers = self.session.get_providers()
        log.info("%s: execution providers %s", self.path, self.providers)
        metadata = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in metadata:
            raise ArtifactError(f"{self.path}: no milsdk metadata ({METADATA_KEY!r}); export it with milsdk export")
        self.info = ModelInfo.from_json(metadata[METADATA_KEY], source=str(self.path))
        self._input_types = {i.name: _ORT_TYPES.get(i.type) for i in self.session.get_inputs()}
        missing = [name for name in self.info.inputs if name not in self._input_types]
        if missing:
            raise ArtifactError(f"{self.path}: the graph lacks inputs {missing} named in its metadata")
        self.max_batch_size: int | None = None
        self.shrink_arena = bool(shrink_arena)
        self._keep_options = ort.RunOptions()
        self.run_options = ort.RunOptions()  # the options of a run that releases the arena afterwards
        if shrink_arena:
            # the CUDA provider's arena is "gpu:0"; naming an arena that does not exist fails every run
            devices = ["cpu:0"] + (["gpu:0"] if "CUDAExecutionProvider" in self.providers else [])
            self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", ";".join(devices))
        self._held_slots = 0  # B * N of the largest batch since the arena was last released
        self._lock = threading.Lock()

    def _load_graph(self) -> onnx.ModelProto | None:
        """The artifact's graph without its external data; None without the ``onnx`` package (the client then
        scans bags itself) or for a file onnx cannot read (onnxruntime reports it in the caller's one line)."""
        try:
            import onnx
        except ImportError:
            log.info("%s: no onnx package; the client scans each bag for NaN/inf itself", self.path)
            return None
        try:
            return onnx.load_model(str(self.path), load_external_data=False)
        except Exception:  # noqa: BLE001 - onnxruntime reports an unreadable file in the caller's one line
            return None

    def _warn_if_int8_weights_saturate(self, proto: onnx.ModelProto) -> None:
        """Warn once per load when the graph multiplies by int8 weights on a CPU where onnxruntime's u8 x s8 kernel
        sums with saturation (x86 without VNNI): a ``cpu-int8-vnni`` export, or one quantised before milsdk used
        uint8 weights."""
        products = int8_weight_products(proto.graph)
        if products and int8_sums_saturate():
            log.warning(
                "%s: %d products with int8 weights, and this CPU has no VNNI (%s): onnxruntime sums them in a "
                "saturating int16, so results can be far from float32 (a probability moved by 0.3 in one "
                "measurement); export it again with --profile cpu-int8 (uint8 weights)",
                self.path, len(products), "/".join(EXACT_INT8_FLAGS),
            )

    def _graph_with_features_check(self, proto: onnx.ModelProto) -> bytes | None:
        """The artifact's graph with the ``features_check`` output, serialised; None (the file is loaded as it
        is, and the client scans bags itself) for a model whose weights live in external files, or for a graph
        that cannot take it."""
        from milsdk.serving.backends.features_check import attach_features_check_if_possible

        where = attach_features_check_if_possible(proto)
        if where is None:
            return None
        log.info("%s: NaN/inf test of the features in the graph, on %s", self.path, where)
        return proto.SerializeToString()

    def _options_for(self, slots: int) -> object:
        """The run options of a batch of ``slots`` = B * N instance slots: release the arena after it when the
        arena holds buffers for a batch more than twice its size."""
        with self._lock:
            if self.shrink_arena and 2 * slots <= self._held_slots:
                self._held_slots = slots
                return self.run_options
            self._held_slots = max(self._held_slots, slots)
            return self._keep_options

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one padded batch (see :class:`milsdk.serving.backends.Backend`)."""
        feed = {}
        for name in self.info.inputs:
            array = inputs[name]
            wanted = self._input_types.get(name)
            if wanted is None or array.dtype == wanted:
                feed[name] = array
            else:
                feed[name] = to_float16(array) if wanted == np.float16 else array.astype(wanted)
        first = feed[self.info.inputs[0]]
        options = self._options_for(int(np.prod(first.shape[:2])) if first.ndim >= 2 else int(first.size))
        try:
            arrays = self.session.run(self._outputs, feed, options)
        except Exception as exc:  # onnxruntime's errors are not one class; give one line naming the artifact
            shape = "x".join(str(s) for s in feed[self.info.inputs[0]].shape)
            raise ServingError(
                f"{self.path}: onnxruntime failed on a batch of shape {shape}: {first_line(exc)}"
            ) from None
        return {name: array.astype(np.float32, copy=False) for name, array in zip(self._outputs, arrays)}

    def close(self) -> None:
        """Drop the session."""
        self.session = None

    def __repr__(self) -> str:
        return f"OnnxRuntimeBackend({str(self.path)!r}, providers={self.providers})"

