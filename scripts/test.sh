#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite: unit tests, export parity, and integration tests that
# start a real Triton server on loopback. CPU only. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${MILSDK_VENV:-.venv}/bin/activate"
exec python -m pytest -q "$@"
