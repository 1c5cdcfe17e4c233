#!/usr/bin/env bash
# fb.resnet.torch ImageNet single-crop errors
# NGPU=8|4|2|1 (default 8) [DATA=/path/to/data] bash scripts/fb_imagenet.sh; DRY_RUN=1 prints sizes only.
set -euo pipefail
exec "${PYTHON:-python}" "$(dirname "$0")/paper_tables.py" fb_imagenet
