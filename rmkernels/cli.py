"""The ``rmk`` command line: ``rmk kernels``, ``rmk train`` and one sub-command per task.

A task plugs in with one line in :data:`TASKS`: the module of its ``cli.py`` and the function that
adds its sub-parser (``add_<task>_parser(subparsers)``, which sets ``func`` on its parsers).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# rmk <name>: (module, function adding the sub-parser); `rmk --help` lists them in this order
TASKS = {
    "sudoku": ("rmkernels.tasks.sudoku.cli", "add_sudoku_parser"),
    "text": ("rmkernels.tasks.text.cli", "add_text_parser"),
    "image": ("rmkernels.tasks.image.cli", "add_image_parser"),
}


def _interpret_first(argv: list[str]) -> None:
    """``rmk kernels --interpret``: TRITON_INTERPRET must be set before any Triton kernel is imported,
    and building the parser imports some (the task commands), so it is set here, first."""
    import os

    if argv[:1] != ["kernels"] or "--interpret" not in argv or os.environ.get("TRITON_INTERPRET") == "1":
        return
    if any(m.startswith("rmkernels.ops.") for m in sys.modules):
        raise SystemExit("rmk kernels --interpret: rmkernels' kernels were imported before; set TRITON_INTERPRET=1 "
                         "in the environment instead")
    os.environ["TRITON_INTERPRET"] = "1"


def _cmd_kernels(args) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from rmkernels.demo import OPS, kernels_demo

    return kernels_demo(rows=args.rows, vocab=args.vocab, dim=args.dim, repeat=args.repeat,
                        progress=not args.quiet, ops=args.ops or OPS)


def add_kernels_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``rmk kernels``."""
    from rmkernels.demo import OPS

    k = subparsers.add_parser(
        "kernels", help="run every op beside its eager reference, check they agree, time both",
        description="Run rm_stats, rm_loss, rm_linear_loss and history_embed with the implementation 'auto' "
                    "picks on this machine and with their eager references on the same random inputs; check "
                    "that they agree and print a table of timings. Exit status 1 if any check fails.")
    k.add_argument("--rows", type=int, default=256, help="positions (rows of the logits)")
    k.add_argument("--vocab", type=int, default=32000, help="vocabulary size")
    k.add_argument("--dim", type=int, default=1024, help="hidden size (rm_linear_loss, history_embed)")
    k.add_argument("--repeat", type=int, default=5, help="timed calls per implementation, after one warm-up")
    k.add_argument("--ops", nargs="+", choices=OPS, default=None, help="only these ops (default: all)")
    k.add_argument("--interpret", action="store_true",
                   help="run the Triton kernels in the CPU interpreter (a correctness check on machines "
                        "without CUDA; slow)")
    k.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    k.add_argument("--quiet", action="store_true", help="no progress bar")
    k.set_defaults(func=_cmd_kernels)
    return k


def build_parser() -> argparse.ArgumentParser:
    """The ``rmk`` parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="rmk", description="Reflective Masking kernels, decoder and trainer for mask diffusion language "
                                "models. `rmk COMMAND --help` describes each command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_kernels_parser(sub)
    from rmkernels.training.cli import add_train_parser

    add_train_parser(sub)
    for name, (module, function) in TASKS.items():
        getattr(importlib.import_module(module), function)(sub)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``rmk`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    _interpret_first(argv)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
