#!/usr/bin/env bash
# Set up a fresh machine for milsdk, idempotently:
#   - a virtual environment (.venv, or $MILSDK_VENV) with milsdk and every extra (train, client, viz, demo, test);
#   - the pip-installable Triton Inference Server (the `tritonserver` inside the nvidia-pytriton wheel);
#   - the server-side Python environment that Triton's Python backend runs model.py in (numpy<2, onnxruntime).
# torch is pinned to the CPU build found on these machines first, so that pip never pulls a multi-GB CUDA build;
# set TORCH_SPEC to choose another (e.g. TORCH_SPEC="torch==2.13.0" on a GPU host with a CUDA index).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${MILSDK_VENV:-.venv}"
PYTHON_BIN="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PIP="pip install --quiet --disable-pip-version-check"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PYTHON_BIN" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

if ! python -c "import torch" 2>/dev/null; then
    echo "[setup] installing $TORCH_SPEC"
    $PIP "$TORCH_SPEC"
fi
echo "[setup] installing milsdk[all,test]"
$PIP -e ".[all,test]"

if ! python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('pytriton') is None)"; then
    echo "[setup] installing the pip-installable Triton server (nvidia-pytriton, binary only)"
    $PIP --no-deps "nvidia-pytriton==0.7.0"
fi
# Triton's Python backend runs model.py with the first Python on PATH, and its stub exchanges arrays in numpy 1.x
# layout: it gets a small environment of its own (numpy<2 + onnxruntime), reused by `milsdk serve` and the tests.
echo "[setup] preparing the server-side Python environment for Triton's Python backend"
python -c "from milsdk.serving import ensure_server_env; print(ensure_server_env())"
# The exporter promises ONNX files that an older onnxruntime loads (lowest IR version for the opset); the tests
# check it in a numpy-1 environment with that runtime, made here once (same mechanism) and reused.
echo "[setup] preparing the environment with the oldest onnxruntime the exports are checked against"
python -c "
from milsdk.export.onnx import OLDEST_ONNXRUNTIME as v
from milsdk.serving.server_env import cache_env_path, ensure_server_env
print(ensure_server_env(cache_env_path(f'onnxruntime-{v}-env'), packages=('numpy<2', f'onnxruntime=={v}')))"
echo "[setup] done: $(python -c 'import milsdk, torch; print("milsdk", milsdk.__version__, "torch", torch.__version__)')"
