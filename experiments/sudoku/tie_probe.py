"""Probe: what a Sudoku model does on pure tie states (results/sudoku/notes/keep_weight_sweep.md).

A tie state is a valid grid with half of a swappable rectangle swapped (a b / b a over two rows,
two columns, two boxes; the half: a same-box pair): it is two cells from the grid and two from the
grid with the rectangle's other half swapped, and nothing else is wrong. The anchored rule
(``--pair-labels anchored``) clears the half whose earliest cell comes later. Printed per model:
how often each half is re-masked (``p(M) > p(token)``) and the median ``p(M) / p(token)`` on each.

    python experiments/sudoku/tie_probe.py CHECKPOINT [CHECKPOINT ...]
"""
import sys

import numpy as np
import torch

from rmkernels.tasks.sudoku.checkpoint import load_checkpoint
from rmkernels.tasks.sudoku.grids import MASK_ID, sample_grids, seed_grids
from rmkernels.tasks.sudoku.synth import CLOSE_PEERS, rectangle_partner


def tie_states(n: int = 400, seed: int = 7):
    """``(states [n, 81], cleared [n, 2], kept [n, 2])``: one tie state per grid that has one."""
    rng = np.random.default_rng(seed)
    states, cleared, kept = [], [], []
    for g in sample_grids(seed_grids(64, rng), n, rng):
        pair = next(((x, y, o) for x in range(81) for y in range(x + 1, 81)
                     if CLOSE_PEERS[x, y] and (o := rectangle_partner(g, x, y)) is not None), None)
        if pair is None:
            continue
        x, y, other = pair
        s = g.copy()
        s[[x, y]] = g[[y, x]]
        halves = sorted([(x, y), tuple(other)], key=min)
        states.append(s)
        kept.append(halves[0])
        cleared.append(halves[1])
    return torch.from_numpy(np.stack(states)).long(), torch.tensor(cleared), torch.tensor(kept)


@torch.no_grad()
def probe(path: str, states, cleared, kept) -> str:
    model = load_checkpoint(path)[0].eval()
    p = torch.softmax(model(input_ids=states).float(), -1)  # [n, 81, V]
    ratio = p[..., MASK_ID] / p.gather(2, states[..., None])[..., 0]  # [n, 81] p(M) / p(token)
    rc, rk = ratio.gather(1, cleared), ratio.gather(1, kept)
    return (f"{path}: re-masked, half the rule clears {100 * (rc > 1).float().mean():.1f}%, half it keeps "
            f"{100 * (rk > 1).float().mean():.1f}%; median p(M)/p(token) {rc.median():.3f} / {rk.median():.3f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    data = tie_states()
    print(f"{data[0].shape[0]} tie states")
    for path in sys.argv[1:]:
        print(probe(path, *data))
