#!/bin/sh
# The shipped three-stage recipe with --pair-labels anchored in every stage, for the variants given
# (keep_weight_sweep.md, "Anchored pair labels from the first stage"), then each one's numbers on the
# 5000 val boards. A stage resumes from its checkpoints if interrupted and is skipped once its
# model.safetensors is written. From the repository root:
#   sh results/sudoku/anchored_recipe.sh full rm rm_hist rm_hist_decay
R="PYTHONPATH=. python -c 'from rmkernels.cli import main; main()' sudoku"
B=runs/x/g9lr2/model.safetensors
V5=/tmp/big/val5000_s4242.txt  # the 5000 val boards every candidate is chosen on
[ -f $V5 ] || eval "$R make-boards --split val --seed 4242 --n 5000 --out $V5"
stage() {  # stage NAME ARGS...: one training run of variant $v into $O/NAME
  name=$1; shift
  [ -f $O/$name/model.safetensors ] || eval "$R train variant --variant $v --base $B --out $O/$name --threads 2 --pair-labels anchored $*" >> $O.$name.log 2>&1
}
for v in "$@"; do
  O=runs/anch1_$v
  stage s1 --steps 4000 --eval-every 1000 --wrong-fraction 0.9 --her-gain 0
  stage s2 --init $O/s1/model.safetensors --steps 2000 --eval-every 1000 --lr 3e-4 --warmup 50 --keep-weight 8
  stage s2b --init $O/s2/model.safetensors --steps 2000 --lr 1.5e-4 --warmup 50 --keep-weight 8 --seed 1
  eval "$R eval --variant $v --checkpoint $O/s2b/model.safetensors --boards $V5 --threads 2 --json results/sudoku/val5000_s4242/v5_anch1_s2b_$v.json" >> $O.eval.log 2>&1
done
