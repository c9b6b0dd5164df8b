#!/usr/bin/env bash
# The arithmetic text task end to end, as the shipped models were made (docs/text.md, "Recipe"):
# base MDM in three stages, the four RM variants from it, fp16 export into the package assets,
# evaluation. Resumable: re-running continues unfinished stages. One thread per training process.
#
#   experiments/text/run_all.sh RUNS_DIR RESULTS_DIR
#
# RMK: the rmk command [rmk]; from a source checkout: RMK="python3 -m rmkernels.cli".
# VARIANT_STEPS: post-training steps of each variant [400, as shipped].
#
# RUNS_DIR holds the training runs (checkpoints, trainer states, metrics); RESULTS_DIR gets the
# evaluation JSON / markdown and copies of the training metrics.
set -euo pipefail
RUNS=${1:?runs directory}
RESULTS=${2:?results directory}
VARIANT_STEPS=${VARIANT_STEPS:-400}
mkdir -p "$RUNS" "$RESULTS"
PY=${RMK:-rmk}

# 1. base MDM (the SFT analogue): three stages, each from the previous one's weights
$PY text train base --out "$RUNS/base" --steps 3000 --batch-size 32 --lr 1.5e-3 --eval-every 250 --stop-at 1400
$PY text train base --out "$RUNS/base2" --init "$RUNS/base/state.pt" --steps 3000 --batch-size 32 --lr 1.5e-3 \
  --warmup 100 --t-power 2 --easy-fraction 0.5 --eval-every 250
$PY text train base --out "$RUNS/base3" --init "$RUNS/base2/state.pt" --steps 3000 --batch-size 32 --lr 1e-3 \
  --warmup 50 --t-power 2 --suffix-fraction 0.5 --easy-fraction 0.5 --eval-every 250 --stop-at 1200

# 2. the four RM variants from the base (same data, steps and seed; they differ in History Reference)
for v in rm rm_hist full rm_hist_decay; do
  $PY text train variant --variant "$v" --base "$RUNS/base3/model" --out "$RUNS/post/$v" \
    --steps "$VARIANT_STEPS" --eval-every "$VARIANT_STEPS" --val-problems 100
done

# 3. fp16 export into the package assets (what `rmk text eval` loads by default)
$PY text train export --src "$RUNS/base3/model" --dst rmkernels/tasks/text/assets/base
for v in rm rm_hist rm_hist_decay full; do
  $PY text train export --src "$RUNS/post/$v/model" --dst "rmkernels/tasks/text/assets/$v"
done
for s in base base2 base3; do cp "$RUNS/$s/metrics.jsonl" "$RESULTS/train_$s.jsonl"; done
for v in rm rm_hist rm_hist_decay full; do cp "$RUNS/post/$v/metrics.jsonl" "$RESULTS/train_$v.jsonl"; done

# 4. evaluation on the 1000 shipped test problems, one system a run (as the shipped results were
#    made: each variant as soon as it was trained), then the paired ordering over the runs;
#    K = 1 only for the base with low-confidence decoding (the reference of the call-budget goal)
mkdir -p "$RESULTS/test1000" "$RESULTS/test5000_s1"
for k in 4 8 2; do
  for s in "base_lc base low_confidence" "base_conf base confidence_remask" "rm rm rm" "rm_hist rm_hist rm" \
           "full full rm" "rm_hist_decay rm_hist_decay rm"; do
    set -- $s
    $PY text eval --threads 1 --variant "$2" --sampler "$3" --tokens-per-step $k \
      --json "$RESULTS/test1000/$1_K$k.json" > "$RESULTS/test1000/$1_K$k.md"
  done
  python3 experiments/text/combine.py $(for n in base_lc base_conf rm rm_hist full rm_hist_decay; do
      echo "$RESULTS/test1000/${n}_K$k.json"; done) \
    --json "$RESULTS/test1000/ordering_K$k.json" --md "$RESULTS/test1000/ordering_K$k.md"
done
$PY text eval --threads 1 --variant base --sampler low_confidence --tokens-per-step 1 \
  --json "$RESULTS/test1000/base_lc_K1.json" > "$RESULTS/test1000/base_lc_K1.md"
# (the whole default grid in one run, K in {1, 2, 4, 8}: `rmk text eval --threads 2 --json FILE`)

# 5. the ordering on the 5000 further test problems at K = 4 (not run for docs/text.md: no time)
$PY text eval --threads 2 --problems results/text/test5000_s1.txt --tokens-per-step 4 \
  --json "$RESULTS/test5000_s1/eval_K4.json" | tee "$RESULTS/test5000_s1/eval_K4.md"
