#!/usr/bin/env bash
# ResNeXt paper Table 7: CIFAR (top-1 error, CIFAR-10 / CIFAR-100)
# NGPU=8|4|2|1 (default 8) [DATA=/path/to/data] bash scripts/resnext_table7.sh; DRY_RUN=1 prints sizes only.
set -euo pipefail
exec "${PYTHON:-python}" "$(dirname "$0")/paper_tables.py" resnext_table7
