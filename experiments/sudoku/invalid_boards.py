"""Where a model's invalid final boards are (docs/sudoku.md, "The ceiling").

    rmk sudoku eval --variant full --predictions PRED
    python experiments/sudoku/invalid_boards.py PRED [--boards BOARDS --ceiling CEILING]

Without ``--boards`` / ``--ceiling``: the shipped 1000 test boards and their packaged ceiling file
(what ``rmk sudoku eval`` uses by default).

Prints invalid boards (all stuck with nothing masked?), their conflict-cell range and how many
differ from the solution in exactly two cells, then per board kind (unique nearest grid / tied /
a nearer grid): boards, invalid, valid, exact, other valid grid, and that kind's share of the
conflict cells per board.
"""
import argparse

import numpy as np

from rmkernels.tasks.sudoku.assets import default_boards, default_ceiling
from rmkernels.tasks.sudoku.ceiling import CLOSER, TIE, UNIQUE, load_alternatives
from rmkernels.tasks.sudoku.data import read_boards
from rmkernels.tasks.sudoku.grids import MASK_ID, conflict_cells, is_valid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("predictions", help="the file `rmk sudoku eval --predictions` wrote")
    ap.add_argument("--boards", default=default_boards(), help="board file (default: the shipped test boards)")
    ap.add_argument("--ceiling", default=default_ceiling(), help="`rmk sudoku ceiling --json` of those boards")
    args = ap.parse_args()
    corrupted, solution = read_boards(args.boards)
    # the predictions file: 81 digits per line, 0 for a cell left masked (data.format_board)
    with open(args.predictions) as f:
        rows = [line.strip() for line in f if line.strip()]
    final = np.array([[MASK_ID if ch in "0." else int(ch) - 1 for ch in row] for row in rows], dtype=np.int64)
    if len(final) != len(solution):
        raise SystemExit(f"{len(final)} predictions for {len(solution)} boards")
    alt = load_alternatives(args.ceiling, corrupted, solution)
    valid = is_valid(final).numpy()
    conf = conflict_cells(final).sum(1).numpy()
    exact = (final == solution).all(1)
    invalid = ~valid
    wrong = (final != solution).sum(1)
    print(f"invalid {invalid.sum()} (any masked: {(final == MASK_ID).any(1).sum()}), conflict cells "
          f"{conf[invalid].min() if invalid.any() else 0}-{conf[invalid].max() if invalid.any() else 0}, "
          f"exactly two wrong digits {(invalid & (wrong == 2)).sum()}; conflicts/board {conf.mean():.3f}")
    for kind in (UNIQUE, TIE, CLOSER):
        sel = alt.kind == kind
        print(f"{kind}: boards {sel.sum()}, invalid {(invalid & sel).sum()}, valid {(valid & sel).sum()}, "
              f"exact {(exact & sel).sum()}, other valid grid {(valid & ~exact & sel).sum()}, "
              f"conflicts/board share {conf[sel].sum() / len(final):.3f}")


if __name__ == "__main__":
    main()
