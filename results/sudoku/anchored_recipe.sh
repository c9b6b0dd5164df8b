#!/bin/sh
# The shipped three-stage recipe with --pair-labels anchored in every stage, for the variants given
# (keep_weight_sweep.md, "Anchored pair labels from the first stage"). Each run resumes from its
# checkpoints if interrupted; a finished stage (its model.safetensors written) is skipped. Run from the repository root:
#   sh results/sudoku/anchored_recipe.sh full rm rm_hist rm_hist_decay
R="PYTHONPATH=. python -c 'from rmkernels.cli import main; main()' sudoku"
B=runs/x/g9lr2/model.safetensors
V5=/tmp/big/val5000_s4242.txt  # the 5000 val boards every candidate is chosen on
[ -f $V5 ] || eval "$R make-boards --split val --seed 4242 --n 5000 --out $V5"
for v in "$@"; do
  O=runs/anch1_$v
  [ -f $O/s1/model.safetensors ] || eval "$R train variant --variant $v --base $B --out $O/s1 --threads 2 --steps 4000 --eval-every 1000 --wrong-fraction 0.9 --her-gain 0 --pair-labels anchored" >> $O.s1.log 2>&1
  [ -f $O/s2/model.safetensors ] || eval "$R train variant --variant $v --base $B --init $O/s1/model.safetensors --out $O/s2 --threads 2 --steps 2000 --eval-every 1000 --lr 3e-4 --warmup 50 --keep-weight 8 --pair-labels anchored" >> $O.s2.log 2>&1
  [ -f $O/s2b/model.safetensors ] || eval "$R train variant --variant $v --base $B --init $O/s2/model.safetensors --out $O/s2b --threads 2 --steps 2000 --lr 1.5e-4 --warmup 50 --keep-weight 8 --seed 1 --pair-labels anchored" >> $O.s2b.log 2>&1
  eval "$R eval --variant $v --checkpoint $O/s2b/model.safetensors --boards $V5 --threads 2 --json results/sudoku/val5000_s4242/v5_anch1_s2b_$v.json" >> $O.eval.log 2>&1
done
