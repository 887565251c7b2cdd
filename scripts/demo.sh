#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job on the embedded demo dataset:
# train ABMIL -> save + reload the checkpoint -> evaluate -> export (ONNX + TorchScript, verified) ->
# predict through onnxruntime, printing bag predictions and each bag's top-attended instances.
# Extra arguments go to `milsdk demo` (see `milsdk demo --help`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${MILSDK_VENV:-.venv}/bin/activate"
exec milsdk demo "$@"
