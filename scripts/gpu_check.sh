#!/usr/bin/env bash
# Every CUDA test and GPU benchmark in one device call (see scripts/gpu_check.py).
#   bash scripts/gpu_check.sh            # GPU machine: device run, timeout_s <= 540
#   bash scripts/gpu_check.sh --dry-run  # CPU, tiny shapes (CI runs this)
#   bash scripts/gpu_check.sh --only sampling
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
