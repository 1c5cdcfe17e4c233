#!/usr/bin/env bash
# ResNet paper Table 6: CIFAR-10 (fb.resnet.torch recipe)
# NGPU=8|4|2|1 (default 8) [DATA=/path/to/data] bash scripts/fb_cifar.sh; DRY_RUN=1 prints sizes only.
set -euo pipefail
exec "${PYTHON:-python}" "$(dirname "$0")/paper_tables.py" fb_cifar
