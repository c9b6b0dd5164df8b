"""``rmk train``: train a TinyMDM on precomputed RM shards; single process or data parallel under torchrun.

    rmk train --data DIR --out DIR [--steps N --batch-size G ...]
    torchrun --nproc_per_node 2 -m rmkernels.training --data DIR --out DIR ...   (the same command)

``--data`` is a directory written by :func:`rmkernels.training.precompute`. The model is built
from ``--seed`` on every rank (rank 0's parameters are broadcast anyway); checkpoints go to
``OUT/step_XXXXXXXX.pt`` (every ``--ckpt-every`` steps and at the end). ``--rank-params`` also
writes each rank's parameters to ``OUT/params_rank{r}.pt``.
"""
from __future__ import annotations

import argparse
import os

import torch

from rmkernels._utils import IMPLS

DESCRIPTION = ("Post-train a TinyMDM with the Reflective Masking loss on precomputed shards "
               "(rmkernels.training.precompute); runs data parallel under torchrun.")


def _add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--data", required=True, help="precomputed dataset directory (index.json + shards)")
    p.add_argument("--out", required=True, help="output directory (checkpoints)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32, help="global examples per optimizer step")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--clip-norm", type=float, default=1.0)
    p.add_argument("--loss-weights", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("REVEAL", "MASK", "KEEP"))
    p.add_argument("--history-steps", type=int, default=0)
    p.add_argument("--history-decay", type=float, default=0.0)
    p.add_argument("--no-rotate", action="store_true", help="History Reference without rotation")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-every", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--kernels", default="auto", choices=IMPLS,
                   help="implementation preference of the loss and history ops (docs/design.md, 'impl')")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: leave as is)")
    p.add_argument("--rank-params", action="store_true", help="write every rank's parameters (for checks)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The stand-alone parser of ``python -m rmkernels.training``."""
    return _add_arguments(argparse.ArgumentParser(prog="python -m rmkernels.training", description=DESCRIPTION))


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``rmk train`` on the ``rmk`` sub-parser collection."""
    p = subparsers.add_parser("train", help="post-train a TinyMDM on precomputed RM shards (torchrun-ready)",
                              description=DESCRIPTION)
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))


def run(args) -> int:
    """Train with the parsed arguments of ``rmk train``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    from rmkernels.history import HistoryNorm
    from rmkernels.models import TinyMDM, TinyMDMConfig
    from rmkernels.training import RMDataset, TrainConfig, Trainer
    from rmkernels.training.distributed import dist_info, init_distributed, shutdown

    info = init_distributed()
    device = torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    data = RMDataset.open(args.data)
    torch.manual_seed(args.seed)
    mcfg = TinyMDMConfig(vocab_size=data.vocab_size, max_len=int(data.index["seq_len"]), dim=args.dim,
                         depth=args.depth, heads=args.heads, dropout=args.dropout)
    model = TinyMDM(mcfg).to(device)
    norm = HistoryNorm(args.dim, device=device) if args.history_steps > 0 else None
    cfg = TrainConfig(
        lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup, total_steps=args.steps,
        grad_accum=args.grad_accum, clip_norm=args.clip_norm or None, batch_size=args.batch_size,
        loss_weights=tuple(args.loss_weights), history_steps=args.history_steps,
        history_decay=args.history_decay, history_rotate=not args.no_rotate, ckpt_every=args.ckpt_every,
        ckpt_dir=args.out, seed=args.seed, progress=not args.quiet, loss_impl=args.kernels,
        history_impl=args.kernels,
    )
    try:
        trainer = Trainer(model, norm, data, cfg)
        trainer.fit(resume=args.resume)
        if args.rank_params:
            params = {f"model.{k}": v for k, v in model.state_dict().items()}
            if norm is not None:
                params.update({f"history_norm.{k}": v for k, v in norm.state_dict().items()})
            torch.save({k: v.cpu() for k, v in params.items()},
                       os.path.join(args.out, f"params_rank{dist_info().rank}.pt"))
        if info.is_main and not args.quiet:
            last = trainer.log[-1] if trainer.log else {}
            print(f"done: step {trainer.step}, loss {last.get('loss', float('nan')):.4f}")
    finally:
        shutdown()
    return 0

