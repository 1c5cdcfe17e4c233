#!/usr/bin/env bash
# ResNeXt paper Table 3: ImageNet, 1x complexity
# NGPU=8|4|2|1 (default 8) [DATA=/path/to/data] bash scripts/resnext_table3.sh; DRY_RUN=1 prints sizes only.
set -euo pipefail
exec "${PYTHON:-python}" "$(dirname "$0")/paper_tables.py" resnext_table3
