#!/usr/bin/env bash
# The arithmetic text task end to end: train (base + four RM variants), ship the fp16 checkpoints,
# evaluate them. Resumable: re-running skips finished stages. One thread per training process.
#
#   experiments/text/run_all.sh RUNS_DIR RESULTS_DIR
#
# RUNS_DIR holds the training runs (checkpoints, trainer states, metrics); RESULTS_DIR gets the
# evaluation JSON / markdown and copies of the training logs.
set -euo pipefail
RUNS=${1:?runs directory}
RESULTS=${2:?results directory}
mkdir -p "$RUNS" "$RESULTS"
PY="python3 -m rmkernels.cli"

# 1. base MDM (the SFT analogue), then the four RM variants from it, then fp16 export into assets/
$PY text train base --out "$RUNS/base" --steps 3000 --batch-size 32 --lr 1.5e-3 --eval-every 250
for v in rm rm_hist rm_hist_decay full; do
  $PY text train variant --variant "$v" --base "$RUNS/base/model" --out "$RUNS/$v" ${VARIANT_ARGS:-}
done
for v in base rm rm_hist rm_hist_decay full; do
  src="$RUNS/$v/model"
  $PY text train export --src "$src" --dst rmkernels/tasks/text/assets/$v
done
for v in base rm rm_hist rm_hist_decay full; do cp "$RUNS/$v/metrics.jsonl" "$RESULTS/train_$v.jsonl"; done

# 2. the default evaluation: 1000 shipped test problems, every system, K in {1, 2, 4, 8}
$PY text eval --threads 2 --json "$RESULTS/eval_test1000.json" | tee "$RESULTS/eval_test1000.md"

# 3. the ordering on 5000 further test problems at K = 4
$PY text eval --threads 2 --problems results/text/test5000_s1.txt --tokens-per-step 4 \
  --json "$RESULTS/eval_test5000_s1_K4.json" | tee "$RESULTS/eval_test5000_s1_K4.md"
