"""Triton Python-backend model for a milsdk ONNX export (copied as ``<repo>/<name>/<version>/model.py``).

It runs ``model.onnx`` from the same version folder with onnxruntime: the CUDA execution provider first when
the instance is a GPU instance and onnxruntime has CUDA, the CPU provider otherwise. Inputs and outputs are
the deployment contract's (``features``, ``mask`` -> ``logits``, ``attention``), named by the model's
config.pbtxt.

Server-side Python needs numpy and onnxruntime, no torch and no milsdk. Use numpy<2 there: the Python-backend
stub of Triton <= 2.51 hands arrays over in numpy 1.x layout, and under numpy 2 outputs come back empty. Under
numpy 2 this file falls back to DLPack transfers, which give correct outputs but log a traceback per output.

The inference itself is :func:`infer` (numpy in, numpy out), importable and testable without Triton; the
``TritonPythonModel`` class is only the glue to ``triton_python_backend_utils``.
"""

import json
import os

import numpy as np
import onnxruntime as ort

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside a Triton server: only the pure functions below are usable
    pb_utils = None

_NUMPY_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(bool)": np.bool_,
    "tensor(int64)": np.int64,
}


def providers_for(instance_kind="CPU", device_id=0):
    """onnxruntime execution providers for a Triton instance kind ("CPU", "GPU", "MODEL"), best first."""
    available = ort.get_available_providers()
    if instance_kind != "CPU" and "CUDAExecutionProvider" in available:
        return [("CUDAExecutionProvider", {"device_id": int(device_id)}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def create_session(model_path, instance_kind="CPU", device_id=0):
    """An onnxruntime session for ``model_path`` on the providers of :func:`providers_for`."""
    options = ort.SessionOptions()
    # Bag sizes vary per request: per-shape memory patterns only cost memory.
    options.enable_mem_pattern = False
    # The pool's threads spin inside a run but stop when it returns. Spinning on after a run takes cores from
    # whatever runs next on the host: the client preparing its next request (a shared-memory client is on the
    # same host by definition), the server's copy of it, other models. With a spinning server beside it, an
    # in-process run of an ABMIL bag of 16,000 x 1024 took 26.5 ms on 2 cores, against 15.8 ms once it stopped.
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(model_path, options, providers=providers_for(instance_kind, device_id))


def run_options_for(session):
    """Run options that shrink the memory arenas after the run (the arena keeps the peak of every bag size)."""
    options = ort.RunOptions()
    arenas = ["cpu:0"]
    if "CUDAExecutionProvider" in session.get_providers():
        device = session.get_provider_options().get("CUDAExecutionProvider", {}).get("device_id", "0")
        arenas.append("gpu:" + str(device))
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", ";".join(arenas))
    return options


class ArenaRelease:
    """Which run options a batch gets: release the arenas after a run whose batch is at most half the instance
    slots (B * N) the arenas hold buffers for, keep them otherwise (milsdk's in-process backend does the same).

    Releasing after every run made the next run of the same size fault its buffers in again: TransMIL at 16,000 x
    1024 ran 611 instead of 498 ms here. Runs of similar sizes keep the arenas warm; a run far smaller than the
    largest lets the memory go.
    """

    def __init__(self, session):
        self.release = run_options_for(session)
        self.keep = ort.RunOptions()
        self.held_slots = 0

    def options_for(self, features):
        """Run options for a batch of ``features`` (B, N, D)."""
        shape = np.shape(features)
        slots = int(np.prod(shape[:2])) if len(shape) >= 2 else int(np.size(features))
        if 2 * slots <= self.held_slots:
            self.held_slots = slots
            return self.release
        self.held_slots = max(self.held_slots, slots)
        return self.keep


def check_shapes(session, inputs):
    """Check a request's inputs against each other and the model's dims before onnxruntime sees them.

    The ONNX graph names its shared axes (``batch``, ``n_instances``): two inputs must agree on every axis of the
    same name, and match every fixed size. Otherwise onnxruntime would fail deep in the graph with its internal
    node names; this error names the inputs and their shapes instead.

    Raises:
        ValueError: e.g. "features has shape (1, 5, 64) and mask (1, 4): they disagree on n_instances (5 vs 4)".
    """
    seen = {}
    for meta in session.get_inputs():
        shape = tuple(int(d) for d in np.shape(inputs[meta.name]))
        dims = ", ".join(str(d) for d in meta.shape)
        if len(shape) != len(meta.shape):
            raise ValueError(f"{meta.name} has shape {shape}, the model takes [{dims}]")
        for dim, size in zip(meta.shape, shape):
            if isinstance(dim, int) and size != dim:
                raise ValueError(f"{meta.name} has shape {shape}, the model takes [{dims}]")
            if isinstance(dim, str) and dim:
                if dim in seen and seen[dim][1] != size:
                    other, other_size, other_shape = seen[dim]
                    raise ValueError(
                        f"{other} has shape {other_shape} and {meta.name} {shape}: they disagree on {dim} "
                        f"({other_size} vs {size})"
                    )
                seen.setdefault(dim, (meta.name, size, shape))


def infer(session, inputs, run_options=None):
    """Run one padded batch.

    Args:
        session: from :func:`create_session`.
        inputs: {input name: array}: features (B, N, D) float, mask (B, N) bool (any 0/1 dtype is converted).
        run_options: from :func:`run_options_for`, or None.

    Returns:
        {output name: array}: logits (B, C) float32, attention (B, N) float32.

    Raises:
        ValueError: a missing input, or inputs whose shapes disagree (:func:`check_shapes`).
    """
    feeds = {}
    for meta in session.get_inputs():
        if meta.name not in inputs:
            expected = [m.name for m in session.get_inputs()]
            raise ValueError(f"missing input '{meta.name}' (the model takes {expected})")
        feeds[meta.name] = np.ascontiguousarray(inputs[meta.name], dtype=_NUMPY_DTYPES.get(meta.type))
    check_shapes(session, feeds)
    names = [meta.name for meta in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds, run_options)))


class TritonPythonModel:
    """Triton Python-backend entry points: thin glue around :func:`infer`."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = create_session(
            path, args.get("model_instance_kind", "CPU"), args.get("model_instance_device_id", 0)
        )
        self.arena = ArenaRelease(self.session)
        self.dlpack = int(np.__version__.split(".")[0]) >= 2
        if self.dlpack and hasattr(pb_utils, "Logger"):
            pb_utils.Logger.log_warn(
                f"numpy {np.__version__}: using DLPack transfers; install numpy<2 in the server's Python "
                "for clean logs"
            )

    def _read(self, request, name):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            raise ValueError(f"request has no input '{name}'")
        return np.from_dlpack(tensor) if self.dlpack else tensor.as_numpy()

    def _tensor(self, name, array):
        array = np.ascontiguousarray(array)
        return pb_utils.Tensor.from_dlpack(name, array) if self.dlpack else pb_utils.Tensor(name, array)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                inputs = {n: self._read(request, n) for n in self.input_names}
                options = self.arena.options_for(inputs[self.input_names[0]])
                outputs = infer(self.session, inputs, options)
                tensors = [self._tensor(n, outputs[n]) for n in self.output_names]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # noqa: BLE001 - one bad request must not fail the others in the batch
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))
                )
        return responses

    def finalize(self):
        self.session = None
