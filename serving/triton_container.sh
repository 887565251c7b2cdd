#!/usr/bin/env bash
# Serve a model repository written by `milsdk export --triton` with NVIDIA's Triton container, on the GPU.
#
#   serving/triton_container.sh [MODEL_REPOSITORY]        (default: model_repository)
#
# Ports 8000 (HTTP/REST), 8001 (gRPC), 8002 (Prometheus metrics) on the host; the repository is mounted read-only
# at /models. The container has the onnxruntime, PyTorch and Python backends, so it serves every variant the
# exporter writes (the Python-backend variant also needs numpy<2 and onnxruntime inside: see serving/README.md).
#
# Environment: TRITON_IMAGE (default below), GPUS (docker --gpus value, default "all"), HTTP_PORT / GRPC_PORT /
# METRICS_PORT (host ports, default 8000 / 8001 / 8002), DRY_RUN=1 prints the command instead of running it.
set -euo pipefail

REPO="$(cd "${1:-model_repository}" && pwd)"
IMAGE="${TRITON_IMAGE:-nvcr.io/nvidia/tritonserver:24.10-py3}"  # Triton 2.51, the version of the pip-installed server
GPUS="${GPUS:-all}"

cmd=(docker run --rm --gpus "$GPUS" --shm-size=1g --ipc=host
     -p "${HTTP_PORT:-8000}:8000" -p "${GRPC_PORT:-8001}:8001" -p "${METRICS_PORT:-8002}:8002"
     -v "$REPO:/models:ro"
     "$IMAGE"
     tritonserver --model-repository=/models --exit-timeout-secs=10)

if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    echo
else
    exec "${cmd[@]}"
fi
