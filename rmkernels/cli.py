"""The `rmk` command line."""
from __future__ import annotations

import argparse
import importlib.util
import sys


def _cmd_kernels(args) -> int:
    from rmkernels.demo import kernels_demo

    return kernels_demo(rows=args.rows, vocab=args.vocab, repeat=args.repeat)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rmk", description="Reflective Masking kernels, decoder and trainer")
    sub = parser.add_subparsers(dest="command", required=True)
    k = sub.add_parser("kernels", help="check every kernel against its eager reference and time both")
    k.add_argument("--rows", type=int, default=256)
    k.add_argument("--vocab", type=int, default=32000)
    k.add_argument("--repeat", type=int, default=5)
    k.set_defaults(func=_cmd_kernels)
    if importlib.util.find_spec("rmkernels.tasks.sudoku") is not None:  # task sub-commands
        from rmkernels.tasks.sudoku.cli import add_sudoku_parser

        add_sudoku_parser(sub)
    if importlib.util.find_spec("rmkernels.tasks.image") is not None:
        from rmkernels.tasks.image.cli import add_image_parser

        add_image_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
