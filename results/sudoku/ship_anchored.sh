#!/bin/sh
# Ship the anchored-recipe models (results/sudoku/anchored_recipe.sh) and re-measure the test tables;
# the previous tables are kept as *_stage2b.json. From the repository root.
set -e
R="PYTHONPATH=. python -c 'from rmkernels.cli import main; main()' sudoku"
for v in rm rm_hist rm_hist_decay full; do
  eval "$R train export --src runs/anch1_$v/s2b/model.safetensors --dst rmkernels/checkpoints/sudoku_$v.safetensors"
done
git mv -k results/sudoku/eval_test1000.json results/sudoku/eval_test1000_stage2b.json
git mv -k results/sudoku/eval_test5000_s4321.json results/sudoku/eval_test5000_s4321_stage2b.json
eval "$R eval --threads 2 --json results/sudoku/eval_test1000.json" > results/sudoku/eval_test1000.md
T5=/tmp/big/test5000_s4321.txt
[ -f $T5 ] || eval "$R make-boards --split test --seed 4321 --n 5000 --out $T5"
eval "$R eval --threads 2 --boards $T5 --ceiling results/sudoku/ceiling_test5000_s4321.json --json results/sudoku/eval_test5000_s4321.json" > results/sudoku/eval_test5000_s4321.md
