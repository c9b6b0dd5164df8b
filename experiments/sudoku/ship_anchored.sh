#!/bin/sh
# Ship the anchored-recipe models (experiments/sudoku/anchored_recipe.sh) into the package and
# re-measure the test tables; the tables they replace move to $RESULTS/archive/ with the suffix
# $OLD_TAG.
#
#   OLD_TAG=stage2b sh experiments/sudoku/ship_anchored.sh
#
# Environment (defaults in brackets):
#   RUNS      where anchored_recipe.sh wrote its runs [runs]
#   RESULTS   the results folder [results/sudoku]
#   OLD_TAG   suffix of the superseded tables in $RESULTS/archive/ [required]
#   THREADS   torch threads [2]
#   RMK       the rmk command [rmk]; from a source checkout: RMK="python3 -m rmkernels.cli"
set -eu
: "${OLD_TAG:?set OLD_TAG to name the tables this replaces (e.g. stage2b)}"
RUNS=${RUNS:-runs}
RESULTS=${RESULTS:-results/sudoku}
THREADS=${THREADS:-2}
RMK=${RMK:-rmk}
PY=${PYTHON:-python3}
# the package's own checkpoint folder (rmkernels.tasks.sudoku.assets), not a hard-coded path
DST=$($PY -c "from rmkernels.tasks.sudoku.assets import checkpoint_dir; print(checkpoint_dir())")
for v in rm rm_hist rm_hist_decay full; do
  $RMK sudoku train export --src "$RUNS/anch1_$v/s2b/model.safetensors" --dst "$DST/sudoku_$v.safetensors"
done
mkdir -p "$RESULTS/archive" "$RESULTS/test1000" "$RESULTS/test5000_s4321" "$RUNS/boards"
[ ! -f "$RESULTS/test1000/eval.json" ] || mv "$RESULTS/test1000/eval.json" "$RESULTS/archive/eval_test1000_$OLD_TAG.json"
[ ! -f "$RESULTS/test5000_s4321/eval.json" ] || mv "$RESULTS/test5000_s4321/eval.json" "$RESULTS/archive/eval_test5000_s4321_$OLD_TAG.json"
$RMK sudoku eval --threads "$THREADS" --quiet --json "$RESULTS/test1000/eval.json" > "$RESULTS/test1000/eval.md"
T5=$RUNS/boards/test5000_s4321.txt
[ -f "$T5" ] || $RMK sudoku make-boards --split test --seed 4321 --n 5000 --out "$T5"
$RMK sudoku eval --threads "$THREADS" --quiet --boards "$T5" --ceiling "$RESULTS/test5000_s4321/ceiling.json" \
  --json "$RESULTS/test5000_s4321/eval.json" > "$RESULTS/test5000_s4321/eval.md"
