#!/usr/bin/env bash
# The GPU proof (docs/performance.md): every CUDA path of this tool once, and its speed.
#   bash scripts/gpu_check.sh [--dry-run] OUT
# Runs with the python on PATH (or $PYTHON): torch 2.11 or later, no venv needed.
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_check.py" "$@"
