#!/usr/bin/env bash
# The recipe: base MDM (3000 steps) + the four RM variants (2400 steps each), one thread,
# fp16 export into rmkernels/tasks/image/assets. Each stage resumes from its run directory.
#   bash experiments/image/train_all.sh RUNS_DIR
set -euo pipefail
OUT=${1:?usage: train_all.sh RUNS_DIR}
cd "$(dirname "$0")/../.."
PYTHONPATH=$PWD python3 -m rmkernels.cli image train all --out "$OUT" --ship --threads 1
