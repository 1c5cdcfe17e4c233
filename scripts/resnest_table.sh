#!/usr/bin/env bash
# ResNeSt paper: ImageNet, ResNeSt-50/101/200/269
# NGPU=8|4|2|1 (default 8) [DATA=/path/to/data] bash scripts/resnest_table.sh; DRY_RUN=1 prints sizes only.
set -euo pipefail
exec "${PYTHON:-python}" "$(dirname "$0")/paper_tables.py" resnest_table
