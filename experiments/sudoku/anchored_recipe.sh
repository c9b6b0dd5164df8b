#!/bin/sh
# The shipped three-stage Sudoku recipe (--pair-labels anchored in every stage) for the variants
# given, then each one's numbers on the 5000 val boards (docs/sudoku.md, "Recipe"). A stage resumes
# from its checkpoints if interrupted and is skipped once its model.safetensors exists.
#
#   BASE=runs/sudoku_base/model.safetensors sh experiments/sudoku/anchored_recipe.sh full rm rm_hist rm_hist_decay
#
# Environment (defaults in brackets):
#   BASE      the base MDM checkpoint (`rmk sudoku train base --out runs/sudoku_base`) [required]
#   RUNS      where the runs, logs and board files go [runs]
#   RESULTS   where the val tables go [results/sudoku]
#   THREADS   torch threads per run [2]
#   RMK       the rmk command [rmk]; from a source checkout: RMK="python3 -m rmkernels.cli"
set -eu
: "${BASE:?set BASE to the base MDM checkpoint (.safetensors)}"
RUNS=${RUNS:-runs}
RESULTS=${RESULTS:-results/sudoku}
THREADS=${THREADS:-2}
RMK=${RMK:-rmk}
V5=$RUNS/boards/val5000_s4242.txt  # the 5000 val boards every candidate is chosen on
mkdir -p "$RUNS/boards" "$RESULTS/val5000_s4242"
[ -f "$V5" ] || $RMK sudoku make-boards --split val --seed 4242 --n 5000 --out "$V5"

stage() {  # stage NAME ARGS...: one training run of variant $v into $O/NAME
  name=$1; shift
  [ -f "$O/$name/model.safetensors" ] || $RMK sudoku train variant --variant "$v" --base "$BASE" --out "$O/$name" \
    --threads "$THREADS" --pair-labels anchored "$@" >> "$O.$name.log" 2>&1
}

for v in "$@"; do
  O=$RUNS/anch1_$v
  stage s1 --steps 4000 --eval-every 1000 --wrong-fraction 0.9 --her-gain 0
  stage s2 --init "$O/s1/model.safetensors" --steps 2000 --eval-every 1000 --lr 3e-4 --warmup 50 --keep-weight 8
  stage s2b --init "$O/s2/model.safetensors" --steps 2000 --lr 1.5e-4 --warmup 50 --keep-weight 8 --seed 1
  $RMK sudoku eval --variant "$v" --checkpoint "$O/s2b/model.safetensors" --boards "$V5" --threads "$THREADS" \
    --json "$RESULTS/val5000_s4242/v5_anch1_s2b_$v.json" >> "$O.eval.log" 2>&1
done
