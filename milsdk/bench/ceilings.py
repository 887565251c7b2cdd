"""The machine's ceilings: float32 GEMM GFLOP/s per runtime (numpy, torch, onnxruntime), memory bandwidth and the
loopback TCP throughput that a same-host Triton request travels.

Performance figures of the suite are stated against the best GEMM rate measured here on the shape of an attention
MIL first layer ([N x D] x [D x 128]), since that GEMM dominates the attention models' FLOPs; a model's achieved
GFLOP/s divided by this ceiling says how much of the machine it uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["GemmResult", "gemm_ceilings", "loopback_bandwidth", "memory_bandwidth", "best_of"]


@dataclass(frozen=True)
class GemmResult:
    """One runtime's float32 GEMM rate on one shape: ``[m x k] x [k x n]``, 2 m k n FLOPs per call."""

    runtime: str
    m: int
    k: int
    n: int
    seconds: float  # best of the repeats

    @property
    def gflops(self) -> float:
        return 2.0 * self.m * self.k * self.n / self.seconds / 1e9

    @property
    def shape(self) -> str:
        return f"[{self.m}x{self.k}]x[{self.k}x{self.n}]"


def best_of(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """The fastest of ``repeats`` timed calls after ``warmup`` untimed ones (seconds): a ceiling is what the
    hardware can do, so the least disturbed run is the estimate."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _onnx_matmul(k: int, n: int, weights: np.ndarray) -> object:
    """An onnxruntime session computing A @ W with W an initializer (packed once, as in an exported model)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "W"], ["Y"])], "gemm",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["m", n])],
        initializer=[numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def gemm_ceilings(
    shapes: Sequence[tuple[int, int, int]], runtimes: Sequence[str] = ("numpy", "torch", "onnxruntime"),
    repeats: int = 5,
) -> list[GemmResult]:
    """float32 GEMM rate of each runtime on each (m, k, n) shape, at each runtime's default thread count.

    Returns:
        One :class:`GemmResult` per (runtime, shape); a runtime that is not installed is left out.
    """
    rng = np.random.default_rng(0)
    results = []
    for m, k, n in shapes:
        a = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((k, n), dtype=np.float32)
        for runtime in runtimes:
            if runtime == "numpy":
                out = np.empty((m, n), np.float32)
                seconds = best_of(lambda: np.matmul(a, w, out=out), repeats)
            elif runtime == "torch":
                try:
                    import torch
                except ModuleNotFoundError:
                    continue
                ta, tw = torch.from_numpy(a), torch.from_numpy(w)
                tout = torch.empty((m, n))
                with torch.inference_mode():
                    seconds = best_of(lambda: torch.mm(ta, tw, out=tout), repeats)
            elif runtime == "onnxruntime":
                session = _onnx_matmul(k, n, w)
                seconds = best_of(lambda: session.run(None, {"A": a}), repeats)
            else:
                raise ValueError(f"unknown runtime {runtime!r}")
            results.append(GemmResult(runtime, m, k, n, seconds))
    return results


def memory_bandwidth(n_bytes: int, repeats: int = 5) -> float:
    """Memory bandwidth of one large copy (GB/s, bytes read + bytes written), numpy ``copyto`` between two
    preallocated float32 arrays of ``n_bytes`` each (first touched before timing, so no page faults count)."""
    src = np.ones(n_bytes // 4, np.float32)
    dst = np.zeros_like(src)
    seconds = best_of(lambda: np.copyto(dst, src), repeats)
    return 2.0 * src.nbytes / seconds / 1e9


def loopback_bandwidth(n_bytes: int, repeats: int = 3) -> float:
    """TCP throughput over 127.0.0.1, GB/s of payload: one thread sends ``n_bytes`` with ``sendall``, another
    receives them into a preallocated buffer. The wire a same-host HTTP or gRPC request travels, without any
    protocol, serialisation or copy into a runtime: what Triton's transport is measured against."""
    import socket
    import threading

    payload = memoryview(np.ones(n_bytes, np.uint8))
    sink = memoryview(bytearray(n_bytes))
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = socket.create_connection(server.getsockname())
        receiver, _ = server.accept()
        with sender, receiver:
            def send() -> None:
                sender.sendall(payload)

            def transfer() -> None:
                thread = threading.Thread(target=send)
                thread.start()
                got = 0
                while got < n_bytes:
                    count = receiver.recv_into(sink[got:])
                    if not count:
                        raise ConnectionError("loopback connection closed early")
                    got += count
                thread.join()

            seconds = best_of(transfer, repeats)
    return n_bytes / seconds / 1e9
