"""Serving: call an exported MIL model in-process or on Triton, and run a Triton server. No torch here.

- :class:`MILClient` (``from_path`` / ``from_triton``) -> ``predict(bags)`` -> :class:`BagPrediction` per bag.
- :mod:`~milsdk.serving.backends`: onnxruntime, Triton (HTTP / gRPC), TorchScript; one ``run(batch)`` interface.
- :func:`plan_batches` / :func:`pad_batch`: how variable-size bags become padded requests.
- :func:`read_bag` / :func:`find_bag_files`: bags from .h5 / .npy feature files.
- :class:`TritonServer`: start a real Triton server on a model repository (``milsdk serve``).

``import milsdk.serving`` needs numpy (and tqdm) only; onnxruntime, tritonclient and torch are imported by the
backend that uses them, when it is built.
"""

from milsdk.serving.client import BagPrediction, MILClient, RunStats
from milsdk.serving.inputs import find_bag_files, read_bag
from milsdk.serving.planner import Batch, BatchPlan, pad_batch, plan_batches
from milsdk.serving.server_env import ensure_server_env
from milsdk.serving.triton_server import TritonServer, find_tritonserver

__all__ = [
    "MILClient",
    "BagPrediction",
    "RunStats",
    "plan_batches",
    "pad_batch",
    "Batch",
    "BatchPlan",
    "read_bag",
    "find_bag_files",
    "TritonServer",
    "find_tritonserver",
    "ensure_server_env",
]
