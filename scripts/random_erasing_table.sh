#!/usr/bin/env bash
# The Random Erasing paper's Table 1 (Zhong et al., AAAI 2020): each network's baseline and
# +RE runs with the paper's recipe (-recipe random-erasing), one after the other, each in its
# own folder under SAVE (default checkpoints/random_erasing), resumed from it when rerun.
#   DATASET=fashionmnist|cifar10|cifar100 (default fashionmnist)  ROWS=ResNet-20,WRN-28-10:RE
#   SEED=0  FLAGS='-data DIR -erasingStyle paper'  DRY_RUN=1 checks every command in seconds.
# Results beside the paper's: python scripts/paper_tables.py gather SAVE/DATASET/*
set -euo pipefail
exec "${PYTHON:-python}" "$(dirname "$0")/paper_tables.py" random_erasing
