"""Decoder-side and weight-averaging checks of the replay / conflict trade-off (keep_weight_sweep.md).

    PYTHONPATH=. python results/sudoku/frontier_checks.py cap CKPT -1,6,2,1     # max_remask, 1000 val boards
    PYTHONPATH=. python results/sudoku/frontier_checks.py split CKPT            # replays by board kind
    PYTHONPATH=. python results/sudoku/frontier_checks.py avg CKPT_A+CKPT_B     # weight average, 5000 val boards

``avg`` reads ``/tmp/big/val5000_s4242.txt`` (``rmk sudoku make-boards --split val --seed 4242 --n 5000``).
"""
import dataclasses
import sys

import torch

from rmkernels.decode.trajectory import replay_statistics
from rmkernels.tasks.sudoku.ceiling import CLOSER, TIE, UNIQUE, load_alternatives
from rmkernels.tasks.sudoku.checkpoint import load_checkpoint
from rmkernels.tasks.sudoku.data import make_boards, read_boards
from rmkernels.tasks.sudoku.evaluate import decode_boards, decode_config
from rmkernels.tasks.sudoku.grids import MASK_ID
from rmkernels.tasks.sudoku.metrics import _hide_correct, board_metrics

KEYS = ("exact_pct", "valid_pct", "replay_pct", "conflicts_per_board")


def run(loaded, corrupted, solution, **overrides):
    model, norm, meta = loaded
    boards = torch.as_tensor(corrupted).long()
    cfg = dataclasses.replace(decode_config(meta), **overrides)
    final, steps, traj = decode_boards(model, norm, boards, cfg)
    return board_metrics(final, solution, steps, traj, inputs=boards), traj


def average(paths):
    """``load_checkpoint`` of the first path with every parameter the mean over all paths."""
    loaded = [load_checkpoint(p) for p in paths]
    model, norm, meta = loaded[0]
    with torch.no_grad():
        for i, module in enumerate((model, norm)):
            if module is None:
                continue
            sd = [ld[i].state_dict() for ld in loaded]
            module.load_state_dict({k: sum(s[k] for s in sd) / len(sd) for k in sd[0]})
    return model, norm, meta


def main(mode, path, arg=None):
    torch.set_num_threads(2)
    if mode == "avg":
        corrupted, solution = read_boards("/tmp/big/val5000_s4242.txt")
        metrics, _ = run(average(path.split("+")), corrupted, solution)
        print(path, {k: round(metrics[k], 4) for k in KEYS})
        return
    corrupted, solution = make_boards("val", 1000, 1234)
    loaded = load_checkpoint(path)
    if mode == "cap":
        for cap in arg.split(","):
            metrics, _ = run(loaded, corrupted, solution, max_remask=int(cap))
            print(path, "max_remask", cap, {k: round(metrics[k], 4) for k in KEYS})
        return
    kind = load_alternatives("results/sudoku/ceiling_val1000.json", corrupted, solution).kind
    _, traj = run(loaded, corrupted, solution)
    every = replay_statistics(traj, MASK_ID)
    wrong = replay_statistics(_hide_correct(traj, torch.as_tensor(solution)), MASK_ID)
    for k in (UNIQUE, TIE, CLOSER):
        sel = torch.as_tensor(kind == k)
        print(f"{k}: {int(sel.sum())} boards, {int(every.reveals[sel].sum())} reveals, "
              f"{int(every.replays[sel].sum())} replays ({int(wrong.replays[sel].sum())} of a wrong digit) "
              f"on {int((every.replays[sel] > 0).sum())} boards")


if __name__ == "__main__":
    main(*sys.argv[1:])
