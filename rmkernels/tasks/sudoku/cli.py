"""``rmk sudoku ...``: train, make board files, evaluate and demo the Sudoku revision models."""
from __future__ import annotations

import argparse


def _cmd_make_boards(args) -> int:
    from rmkernels.tasks.sudoku.data import make_boards, write_boards

    corrupted, solution = make_boards(args.split, args.n, args.seed, (args.min_corrupt, args.max_corrupt))
    write_boards(args.out, corrupted, solution)
    print(f"wrote {len(corrupted)} {args.split} boards to {args.out}")
    return 0


def _cmd_train(args) -> int:
    from rmkernels.tasks.sudoku.train import run

    return run(args)


def add_sudoku_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``rmk sudoku`` and its sub-commands on the ``rmk`` sub-parser collection."""
    from rmkernels.tasks.sudoku.data import DEFAULT_SEED, SPLITS
    from rmkernels.tasks.sudoku.train import build_parser

    p = subparsers.add_parser("sudoku", help="Sudoku revision: train, evaluate, demo")
    sub = p.add_subparsers(dest="sudoku_command", required=True)

    t = sub.add_parser("train", help="pretrain the base MDM / post-train the RM variants")
    build_parser(t)
    t.set_defaults(func=_cmd_train)

    m = sub.add_parser("make-boards", help="write a board file (<corrupted> <solution> per line)")
    m.add_argument("--split", choices=sorted(SPLITS), default="test")
    m.add_argument("--n", type=int, default=1000)
    m.add_argument("--seed", type=int, default=DEFAULT_SEED)
    m.add_argument("--min-corrupt", type=int, default=4)
    m.add_argument("--max-corrupt", type=int, default=20)
    m.add_argument("--out", required=True)
    m.set_defaults(func=_cmd_make_boards)
    return p
