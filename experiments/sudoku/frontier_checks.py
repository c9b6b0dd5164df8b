"""Decoder-side and weight-averaging checks of the replay / conflict trade-off (docs/sudoku.md,
"What did not help"; numbers in results/sudoku/notes/keep_weight_sweep.md).

    python experiments/sudoku/frontier_checks.py cap CKPT --caps -1,6,2,1   # max_remask, 1000 val boards
    python experiments/sudoku/frontier_checks.py split CKPT                 # replays by board kind, 1000 val boards
    python experiments/sudoku/frontier_checks.py avg CKPT_A CKPT_B --boards VAL5000
                                                                            # weight average of checkpoints

``avg`` needs the 5000 val boards (``rmk sudoku make-boards --split val --seed 4242 --n 5000 --out
FILE``); ``split`` reads the ceiling file of the 1000 val boards (``--ceiling``, default
``$RESULTS/val1000/ceiling.json`` with ``RESULTS`` = ``results/sudoku``).
"""
import argparse
import dataclasses
import os

import torch

from rmkernels.decode.trajectory import replay_statistics
from rmkernels.tasks.sudoku.ceiling import CLOSER, TIE, UNIQUE, load_alternatives
from rmkernels.tasks.sudoku.checkpoint import load_checkpoint
from rmkernels.tasks.sudoku.data import make_boards, read_boards
from rmkernels.tasks.sudoku.evaluate import decode_boards, decode_config
from rmkernels.tasks.sudoku.grids import MASK_ID
from rmkernels.tasks.sudoku.metrics import board_metrics, hide_correct

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=("cap", "split", "avg"))
    ap.add_argument("checkpoints", nargs="+", help="checkpoint(s); avg averages all of them")
    ap.add_argument("--caps", default="-1,6,2,1", help="cap: max_remask values, comma-separated")
    ap.add_argument("--boards", default=None, help="avg: the 5000 val boards file")
    ap.add_argument("--ceiling", default=os.path.join(os.environ.get("RESULTS", "results/sudoku"), "val1000", "ceiling.json"),
                    help="split: ceiling JSON of the 1000 val boards (seed 1234)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.mode == "avg":
        if args.boards is None:
            ap.error("avg needs --boards (the 5000 val boards)")
        corrupted, solution = read_boards(args.boards)
        metrics, _ = run(average(args.checkpoints), corrupted, solution)
        print("+".join(args.checkpoints), {k: round(metrics[k], 4) for k in KEYS})
        return
    corrupted, solution = make_boards("val", 1000, 1234)
    for path in args.checkpoints:
        loaded = load_checkpoint(path)
        if args.mode == "cap":
            for cap in args.caps.split(","):
                metrics, _ = run(loaded, corrupted, solution, max_remask=int(cap))
                print(path, "max_remask", cap, {k: round(metrics[k], 4) for k in KEYS})
            continue
        kind = load_alternatives(args.ceiling, corrupted, solution).kind
        _, traj = run(loaded, corrupted, solution)
        every = replay_statistics(traj, MASK_ID)
        wrong = replay_statistics(hide_correct(traj, torch.as_tensor(solution)), MASK_ID)
        for k in (UNIQUE, TIE, CLOSER):
            sel = torch.as_tensor(kind == k)
            print(f"{path} {k}: {int(sel.sum())} boards, {int(every.reveals[sel].sum())} reveals, "
                  f"{int(every.replays[sel].sum())} replays ({int(wrong.replays[sel].sum())} of a wrong digit) "
                  f"on {int((every.replays[sel] > 0).sum())} boards")


if __name__ == "__main__":
    main()
