# Probe (not shipped, not part of the package): a third stage whose on-policy labels are the
# canonical nearest grid. Run from the repository root:
#   PYTHONPATH=. python results/sudoku/tiebreak_probe.py OUT_DIR N_TRAIN_BOARDS [KEEP_WEIGHT]
# It wraps rmkernels.tasks.sudoku.onpolicy.collect_states: before the decoder's failed states are
# collected, each train board's solution is replaced by the lexicographically smallest of the valid
# grids nearest to its corrupted input (CP-SAT, as in rmkernels/tasks/sudoku/ceiling.py), so tied
# boards get one consistent answer. Then posttrain() runs 1000 steps from the shipped stage-2 full
# model (runs/stage2/full, base runs/x/g9lr2) with 8 on-policy rows per batch, lr 1e-4.
import sys, time, json
import numpy as np, torch
from rmkernels.tasks.sudoku.ceiling import nearest_grids
import rmkernels.tasks.sudoku.onpolicy as onpolicy
from rmkernels.tasks.sudoku.posttrain import PostTrainConfig, posttrain

orig = onpolicy.collect_states
def relabelled(model, norm, settings, corrupted, solution, kernels="auto", only_invalid=True):
    t0 = time.time(); sol = np.array(solution).copy(); changed = tie = closer = 0
    for j in range(len(sol)):
        c, s = corrupted[j].tolist(), sol[j].tolist()
        k = sum(a != b for a, b in zip(c, s))
        near, grids = nearest_grids(c, s)
        if not grids: continue
        cands = grids + ([tuple(s)] if near == k else [])
        canon = min(cands)
        tie += near == k; closer += near < k
        if list(canon) != s: sol[j] = canon; changed += 1
    print(json.dumps({"relabel_s": round(time.time() - t0, 1), "tie": tie, "closer": closer, "changed": changed}), flush=True)
    return orig(model, norm, settings, corrupted, torch.as_tensor(sol), kernels, only_invalid)
onpolicy.collect_states = relabelled

torch.set_num_threads(2)
cfg = PostTrainConfig(steps=1000, lr=1e-4, warmup=50, keep_weight=float(sys.argv[3]) if len(sys.argv) > 3 else 8.0, init="runs/stage2/full/model.safetensors",
                      onpolicy_boards=int(sys.argv[2]), onpolicy_rows=8, eval_every=1000)
print(posttrain("full", "runs/x/g9lr2/model.safetensors", sys.argv[1], cfg, log=print))
