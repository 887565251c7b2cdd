#!/usr/bin/env bash
# Serve a model repository written by `milsdk export --triton` with the pip-installed Triton server, on the CPU.
#
#   serving/triton_pip.sh [MODEL_REPOSITORY]              (default: model_repository)
#
# Uses `milsdk serve`: the tritonserver inside the nvidia-pytriton wheel (pip install --no-deps nvidia-pytriton),
# which has only the Python backend, so it loads the repository's Python-backend models (export with
# `--profile triton-python`). Its server-side Python (numpy<2 + onnxruntime) is made on first use in
# ~/.cache/milsdk/triton-python-env, or taken from $MILSDK_TRITON_PYTHON.
#
# Environment: HTTP_PORT / GRPC_PORT / METRICS_PORT (default 8000 / 8001 / 8002; 0 = a free port),
# HOST (default 127.0.0.1). Ctrl-C or SIGTERM stops the server.
set -euo pipefail

exec milsdk serve "${1:-model_repository}" \
    --host "${HOST:-127.0.0.1}" \
    --http-port "${HTTP_PORT:-8000}" --grpc-port "${GRPC_PORT:-8001}" --metrics-port "${METRICS_PORT:-8002}"
