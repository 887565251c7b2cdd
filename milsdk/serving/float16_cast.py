"""float32 -> float16 conversion of the features for a float16 wire format, fast enough to pay for itself.

A model exported with ``features_dtype = "float16"`` (the ``triton-python-wire16`` profile) takes its features
as float16: half the bytes on the wire; the client casts the caller's float32 bags. numpy's ``astype(float16)``
converts one element at a time: 28 ms for a 16,000 x 1024 bag here, more than the 65 -> 33 MB saves on the way to
a Triton server. onnxruntime's ``Cast`` kernel converts with the CPU's F16C instructions on every core, 3.6 ms for
the same bag, and can write straight into a buffer the caller names (a shared-memory region), so the float16
copy of the bag is written once.

Both round to nearest even, overflow to +-inf and keep NaN, inf and subnormals as IEEE says: the results are
bit-identical (``tests/serving/test_float16_cast.py`` compares them, special values included). Without
onnxruntime or onnx, and for small arrays (where a session call costs more than it saves), numpy converts.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

__all__ = ["to_float16", "ONNXRUNTIME_MIN_ELEMENTS"]

log = logging.getLogger(__name__)

#: arrays smaller than this are converted by numpy (a session call costs ~20 us; numpy does 64k elements in ~30 us)
ONNXRUNTIME_MIN_ELEMENTS = 1 << 16

_lock = threading.Lock()
_session: Any = None
_unavailable = False


def _cast_session() -> Any:
    """The process's onnxruntime session of one ``Cast(to=float16)`` over a tensor of any shape; None without
    onnxruntime or onnx."""
    global _session, _unavailable
    if _session is not None or _unavailable:
        return _session
    with _lock:
        if _session is not None or _unavailable:
            return _session
        try:
            import onnxruntime as ort
            from onnx import TensorProto, helper
        except ImportError:
            log.info("no onnxruntime or onnx: float16 features are converted by numpy")
            _unavailable = True
            return None
        graph = helper.make_graph(
            [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT16)], "to_float16",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 7  # the lowest that opset 13 needs: every onnxruntime >= 1.18 reads it
        options = ort.SessionOptions()
        # the pool must not keep spinning after a conversion: the next thing the client does is send the bytes
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        _session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return _session


def to_float16(array: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``array`` as float16, optionally written into ``out``.

    Args:
        array: any shape and dtype; float32 arrays of at least :data:`ONNXRUNTIME_MIN_ELEMENTS` elements are
            converted by onnxruntime, everything else by numpy (same results).
        out: None, or a writable C-contiguous float16 array of ``array``'s shape (e.g. a view of a
            shared-memory region) to write the result into.

    Returns:
        The float16 array: ``out`` when given, else a new array (``array`` itself when it is float16 already).

    Raises:
        ValueError: ``out`` is not a C-contiguous float16 array of ``array``'s shape.
    """
    if out is not None and (out.dtype != np.float16 or out.shape != array.shape or not out.flags.c_contiguous
                            or not out.flags.writeable):
        raise ValueError(f"to_float16: out must be a writable C-contiguous float16 array of shape {array.shape}, "
                         f"got {out.dtype} {out.shape}")
    session = None
    if array.dtype == np.float32 and array.size >= ONNXRUNTIME_MIN_ELEMENTS:
        session = _cast_session()
    if session is None:
        if out is None:
            return array.astype(np.float16, copy=False)
        np.copyto(out, array, casting="unsafe")
        return out
    source = np.ascontiguousarray(array)
    result = np.empty(source.shape, np.float16) if out is None else out
    binding = session.io_binding()
    binding.bind_cpu_input("x", source)
    binding.bind_output("y", "cpu", 0, np.float16, list(source.shape), result.ctypes.data)
    session.run_with_iobinding(binding)
    return result
