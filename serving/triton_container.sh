#!/usr/bin/env bash
# Serve a model repository written by `milsdk export --triton` with NVIDIA's Triton container, on the GPU.
#
#   serving/triton_container.sh [MODEL_REPOSITORY]        (default: model_repository)
#
# Ports 8000 (HTTP/REST), 8001 (gRPC), 8002 (Prometheus metrics) on the host; the repository is mounted read-only
# at /models. The container has the onnxruntime, PyTorch and Python backends, so it serves every variant the
# exporter writes (the Python-backend variant also needs numpy<2 and onnxruntime inside: see serving/README.md).
#
# Hardened like `milsdk serve` for other hosts (the ports are published on every host interface): the models are
# fixed at start (--model-control-mode=none) and the model-repository, trace, logging and shared-memory APIs answer
# only requests with the header `milsdk-api-key: $MILSDK_TRITON_API_KEY` (a random key, printed, when unset).
#
# Environment: TRITON_IMAGE (default below), GPUS (docker --gpus value, default "all"), HTTP_PORT / GRPC_PORT /
# METRICS_PORT (host ports, default 8000 / 8001 / 8002), MILSDK_TRITON_API_KEY, DRY_RUN=1 prints the command
# instead of running it.
set -euo pipefail

REPO="$(cd "${1:-model_repository}" && pwd)"
IMAGE="${TRITON_IMAGE:-nvcr.io/nvidia/tritonserver:24.10-py3}"  # Triton 2.51, the version of the pip-installed server
GPUS="${GPUS:-all}"
if [[ -z "${MILSDK_TRITON_API_KEY:-}" ]]; then
    MILSDK_TRITON_API_KEY="$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
    echo "key of the restricted APIs (header milsdk-api-key): $MILSDK_TRITON_API_KEY" >&2
fi
RESTRICTED="model-repository,trace,logging,shared-memory:milsdk-api-key=$MILSDK_TRITON_API_KEY"

cmd=(docker run --rm --gpus "$GPUS" --shm-size=1g --ipc=host
     -p "${HTTP_PORT:-8000}:8000" -p "${GRPC_PORT:-8001}:8001" -p "${METRICS_PORT:-8002}:8002"
     -v "$REPO:/models:ro"
     "$IMAGE"
     tritonserver --model-repository=/models --exit-timeout-secs=10 --model-control-mode=none
     "--http-restricted-api=$RESTRICTED" "--grpc-restricted-protocol=$RESTRICTED")

if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    echo
else
    exec "${cmd[@]}"
fi
