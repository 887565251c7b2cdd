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
# Environment: HTTP_PORT / GRPC_PORT (default 8000 / 8001; 0 = a free port), METRICS_PORT (unset = no metrics
# endpoint; 8002 is the usual one), HOST (default 127.0.0.1), MILSDK_TRITON_API_KEY (the key of the restricted
# APIs; unset = a random one, printed). Ctrl-C or SIGTERM stops the server.
set -euo pipefail

exec milsdk serve "${1:-model_repository}" \
    --host "${HOST:-127.0.0.1}" \
    --http-port "${HTTP_PORT:-8000}" --grpc-port "${GRPC_PORT:-8001}" ${METRICS_PORT:+--metrics-port "$METRICS_PORT"}
