"""Peak resident memory of one bag, each path in a fresh process (a process's peak RSS never goes down, so two
measurements in one process would hide each other).

``python -m milsdk.bench.rss KIND ARTIFACT N D`` loads the artifact (KIND ``onnxruntime`` / ``torchscript``: the
file through :class:`~milsdk.serving.MILClient`; ``eager``: a milsdk checkpoint run by PyTorch), records the peak
RSS so far (libraries, session, weights), makes one (N, D) float32 bag, predicts it and prints a JSON line with the
peak before the bag and after the prediction.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["peak_rss", "measure_in_process"]


def _peak_bytes() -> int:
    """This process's peak RSS. VmHWM first: ``ru_maxrss`` survives ``exec`` on Linux, so a child started by a
    large parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def measure_in_process(kind: str, artifact: str, n: int, dim: int) -> dict[str, Any]:
    """The measurement itself (run in the fresh process)."""
    if kind == "eager":
        import torch

        from milsdk.export import DeploymentModule
        from milsdk.utils.checkpoint import load_checkpoint

        module = DeploymentModule(load_checkpoint(artifact).eval())

        def run(bag: dict[str, np.ndarray]) -> None:
            from milsdk.bench.workload import model_inputs

            arrays = model_inputs(bag, list(module.input_names))
            with torch.inference_mode():
                module(*[torch.from_numpy(arrays[k]) for k in module.input_names])
    else:
        from milsdk.serving import MILClient

        client = MILClient.from_path(artifact)

        def run(bag: dict[str, np.ndarray]) -> None:
            predictions = client.predict([bag])
            if not predictions[0].ok:
                raise RuntimeError(predictions[0].error)
    before = _peak_bytes()
    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(n)))
    cells = rng.permutation(side * side)[:n]
    bag = {"features": rng.standard_normal((n, dim), dtype=np.float32),
           "coords": np.stack([cells // side, cells % side], axis=1).astype(np.float32)}
    run(bag)
    return {"kind": kind, "n": n, "dim": dim, "bag_bytes": n * dim * 4, "peak_before_bag": before,
            "peak": _peak_bytes()}


def peak_rss(prepared: Any, n: int, dim: int, work_dir: Path, full: bool = True) -> list[dict[str, Any]]:
    """Peak RSS of one (n, dim) bag for a prepared model's paths, each in its own process.

    Args:
        prepared: a :class:`~milsdk.bench.workload.PreparedModel`.
        full: also eager PyTorch and TorchScript (each process imports torch: seconds); else onnxruntime only.

    Returns:
        One row per path: model, path, n, bag_bytes, peak_before_bag, peak (bytes), or ``error``.
    """
    from milsdk.utils.checkpoint import save_checkpoint

    work_dir.mkdir(parents=True, exist_ok=True)
    kinds: list[tuple[str, str, Path | None]] = [("onnxruntime (MILClient)", "onnxruntime", prepared.onnx_path)]
    if full:
        checkpoint = save_checkpoint(prepared.model, work_dir / f"{prepared.name}.ckpt")
        kinds += [("TorchScript (MILClient)", "torchscript", prepared.torchscript_path),
                  ("eager milsdk", "eager", checkpoint)]
    rows = []
    for path_name, kind, artifact in kinds:
        row: dict[str, Any] = {"model": prepared.name, "path": path_name, "n": n, "bag_bytes": n * dim * 4}
        if artifact is None:
            rows.append({**row, "error": "no artifact"})
            continue
        proc = subprocess.run(
            [sys.executable, "-m", "milsdk.bench.rss", kind, str(artifact), str(n), str(dim)],
            capture_output=True, text=True, timeout=900,
        )
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append({**row, "error": f"exit {proc.returncode}: {tail[:200]}"})
            continue
        rows.append({**row, **json.loads(proc.stdout.strip().splitlines()[-1])})
    return rows


if __name__ == "__main__":
    kind_arg, artifact_arg, n_arg, dim_arg = sys.argv[1:5]
    print(json.dumps(measure_in_process(kind_arg, artifact_arg, int(n_arg), int(dim_arg))))
