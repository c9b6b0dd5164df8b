"""Training for the Sudoku task: base MDM pretraining on solution grids, and the command line of
both stages (``base``; ``variant``: RM post-training, :mod:`rmkernels.tasks.sudoku.posttrain`).

Base pretraining is a standard masked diffusion objective: per grid ``t ~ U(0, 1)``, each cell is
masked with probability ``t`` (at least one cell), and the loss is the cross-entropy on the masked
cells (``weighting="token"``: mean over masked cells; ``"1/t"``: the MDM ELBO weight
``sum CE / (t * 81)`` per grid). Data are drawn fresh every step from the train split's seed-grid
pool under random transforms; the randomness of step ``s`` is a function of ``(seed, s)`` only, so
a resumed run continues exactly.

Run in the background (one thread), e.g.::

    nohup python -m rmkernels.tasks.sudoku.train base --out runs/sudoku_base > runs/sudoku_base.log 2>&1 &
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rmkernels.models import TinyMDM, TinyMDMConfig
from rmkernels._utils import atomic_write
from rmkernels.tasks.common import add_dataclass_args, lr_at
from rmkernels.tasks.sudoku.checkpoint import export_checkpoint, save_checkpoint
from rmkernels.tasks.sudoku.data import DEFAULT_SEED, make_boards, split_rng
from rmkernels.tasks.sudoku.grids import CELLS, MASK_ID, VOCAB_SIZE, sample_grids, seed_grids
from rmkernels.tasks.sudoku.posttrain import VARIANTS, PostTrainConfig, posttrain


@dataclass
class PretrainConfig:
    steps: int = 6000
    batch_size: int = 64
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 300
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    weighting: str = "token"  # "token" | "1/t"
    seed: int = 0  # model init and per-step randomness
    data_seed: int = DEFAULT_SEED  # train/val split seed
    pool_size: int = 4096  # seed grids of the train split
    dim: int = 128
    depth: int = 4
    heads: int = 4
    grid: int = 9  # board-structured positions + relation bias (TinyMDMConfig.grid); 0: free positions
    eval_every: int = 500
    ckpt_every: int = 500
    val_boards: int = 512


def mask_batch(grids: np.ndarray, rng: np.random.Generator):
    """MDM forward process: ``(inputs, masked [B, 81] bool, t [B])`` with at least one masked cell per grid."""
    B = grids.shape[0]
    t = rng.random(B)  # [B]
    masked = rng.random((B, CELLS)) < t[:, None]
    masked[np.arange(B), rng.integers(CELLS, size=B)] = True
    return np.where(masked, MASK_ID, grids), masked, t


def mdm_loss(model, grids: np.ndarray, rng: np.random.Generator, weighting: str = "token") -> torch.Tensor:
    inputs, masked, t = mask_batch(grids, rng)
    logits = model(input_ids=torch.from_numpy(inputs))  # [B, 81, V]
    ce = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), torch.from_numpy(grids).reshape(-1), reduction="none")
    ce = ce.view(grids.shape) * torch.from_numpy(masked)  # [B, 81]
    if weighting == "token":
        return ce.sum() / masked.sum()
    if weighting == "1/t":
        return (ce.sum(1) / (torch.from_numpy(t).float() * CELLS)).mean()
    raise ValueError(f"weighting must be 'token' or '1/t', got {weighting!r}")


@torch.no_grad()
def masked_accuracy(model, grids: np.ndarray, ratios=(0.1, 0.3, 0.5, 0.7), seed: int = 0) -> dict:
    """Per-cell accuracy of one-shot argmax fills at fixed masking ratios, and the share of grids
    fully recovered when 4-20 cells are masked (``fill4_20``)."""
    rng = np.random.default_rng(seed)
    out = {}
    model.eval()
    for r in ratios:
        masked = rng.random(grids.shape) < r
        pred = model(input_ids=torch.from_numpy(np.where(masked, MASK_ID, grids))).argmax(-1).numpy()
        out[f"acc@{r}"] = float((pred == grids)[masked].mean())
    k = rng.integers(4, 21, size=len(grids))
    masked = rng.random(grids.shape).argsort(1).argsort(1) < k[:, None]
    pred = model(input_ids=torch.from_numpy(np.where(masked, MASK_ID, grids))).argmax(-1).numpy()
    out["fill4_20"] = float(np.where(masked, pred == grids, True).all(1).mean())
    model.train()
    return out


def _save_state(path: str, model, opt, step: int) -> None:
    atomic_write(path, lambda tmp: torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, tmp))


def pretrain(cfg: PretrainConfig, out_dir: str, log=print, resume: bool = True, progress: bool = False) -> str:
    """Pretrain the base MDM; writes ``out_dir/model.safetensors`` (+ .json), ``state.pt`` and ``metrics.jsonl``.

    ``progress`` shows a progress bar over the steps (stderr)."""
    from tqdm.auto import tqdm

    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = TinyMDM(TinyMDMConfig(vocab_size=VOCAB_SIZE, max_len=CELLS, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads,
                                grid=cfg.grid))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    state_path, start = os.path.join(out_dir, "state.pt"), 0
    if resume and os.path.exists(state_path):
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
        log(f"resumed from step {start}")
    pool = seed_grids(cfg.pool_size, split_rng("train", cfg.data_seed))
    _, val_grids = make_boards("val", cfg.val_boards, cfg.data_seed)
    meta = {"kind": "base", "config": asdict(cfg), "command": " ".join(sys.argv)}
    t0, wall_before = time.time(), 0.0
    metrics_path = os.path.join(out_dir, "metrics.jsonl")
    if start and os.path.exists(metrics_path):
        with open(metrics_path) as f:
            rows = [json.loads(x) for x in f if x.strip()]
        wall_before = rows[-1]["wall_s"] if rows else 0.0
    model.train()
    recent = []  # losses since the last log line
    for step in tqdm(range(start, cfg.steps), desc="sudoku base", initial=start, total=cfg.steps,
                     disable=not progress, dynamic_ncols=True):
        rng = np.random.default_rng([cfg.seed, step])
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        loss = mdm_loss(model, sample_grids(pool, cfg.batch_size, rng), rng, cfg.weighting)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        recent.append(float(loss.detach()))
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            wall = wall_before + time.time() - t0
            row = {"step": done, "loss": round(sum(recent) / len(recent), 4), "lr": lr_at(step, cfg), "wall_s": round(wall, 1),
                   **masked_accuracy(model, val_grids)}
            recent = []
            log(json.dumps(row))
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            meta.update(step=done, wall_s=round(wall_before + time.time() - t0, 1))
            save_checkpoint(os.path.join(out_dir, "model.safetensors"), model, meta)
            _save_state(state_path, model, opt, done)
    return os.path.join(out_dir, "model.safetensors")


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="python -m rmkernels.tasks.sudoku.train")
    sub = p.add_subparsers(dest="stage", required=True)
    b = sub.add_parser("base", help="pretrain the base MDM on solution grids",
                       description="Pretrain the base masked diffusion model on solution grids of the train split "
                                   "(docs/sudoku.md, 'Recipe'); resumes from OUT unless --no-resume.")
    b.add_argument("--out", required=True, help="run directory (checkpoint, state, metrics)")
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--no-resume", action="store_true")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dataclass_args(b, PretrainConfig)
    v = sub.add_parser("variant", help="post-train one RM variant from the base MDM",
                       description="Reflective Masking post-training of one variant (rm, rm_hist, rm_hist_decay, "
                                   "full) from the base MDM (docs/spec.md §4, docs/sudoku.md 'Recipe').")
    v.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    v.add_argument("--base", required=True, help="base MDM checkpoint (.safetensors)")
    v.add_argument("--out", required=True, help="run directory (checkpoint, trainer states, metrics)")
    v.add_argument("--threads", type=int, default=1)
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dataclass_args(v, PostTrainConfig)
    e = sub.add_parser("export", help="re-save a checkpoint for shipping (fp16 storage by default)",
                       description="Re-save a checkpoint (model + HER norm + metadata) with its tensors stored in "
                                   "--dtype, e.g. into the package's assets to ship it.")
    e.add_argument("--src", required=True)
    e.add_argument("--dst", required=True)
    e.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    e.add_argument("--note", action="append", default=[], metavar="KEY=VALUE", help="extra metadata")
    return p


def _log(args):
    """Log lines: through tqdm (so they do not break a progress bar) unless ``--quiet``."""
    if getattr(args, "quiet", True):
        return lambda s: print(s, flush=True)
    from tqdm.auto import tqdm

    return tqdm.write


def run(args) -> int:
    torch.set_num_threads(getattr(args, "threads", 1))
    if args.stage == "base":
        cfg = PretrainConfig(**{k: getattr(args, k) for k in PretrainConfig.__dataclass_fields__})
        path = pretrain(cfg, args.out, log=_log(args), resume=not args.no_resume, progress=not args.quiet)
    elif args.stage == "export":
        notes = dict(n.split("=", 1) for n in args.note)
        path = export_checkpoint(args.src, args.dst, getattr(torch, args.dtype), notes)
    else:
        cfg = PostTrainConfig(**{k: getattr(args, k) for k in PostTrainConfig.__dataclass_fields__})
        path = posttrain(args.variant, args.base, args.out, cfg, log=_log(args), progress=not args.quiet)
    print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run(build_parser().parse_args()))
