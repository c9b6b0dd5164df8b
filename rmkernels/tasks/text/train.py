"""Training of the arithmetic models: base MDM pretraining, RM post-training of the variants,
export for shipping, and the whole recipe in one command (``rmk text train all``).

Base pretraining is the SFT analogue of a mask diffusion LM: a row is ``<expression>=`` + the
generation window (work, ``<eos>``, padding); per row ``t ~ U(0, 1)``, each window position is
masked with probability ``t`` (at least one), the prompt never; the loss is the cross-entropy on
the masked positions (``weighting="token"``: mean over them; ``"1/t"``: LLaDA's ``sum CE / (t *
window)`` per row). Expressions are drawn fresh every step from the train split (the hash rule
keeps val and test expressions out); the randomness of step ``s`` is a function of ``(seed, s)``
only, so a resumed run continues exactly. ``max_minutes`` stops a run (resumably) after that much
wall time, so a time budget can be kept on a shared machine.

Run in the background (one thread), e.g.::

    nohup python -m rmkernels.cli text train all --out runs/text > runs/text.log 2>&1 &
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

from rmkernels._utils import atomic_write
from rmkernels.tasks.common import add_dataclass_args, lr_at
from rmkernels.training.variants import claim_run_dir
from rmkernels.tasks.text.checkpoint import load_checkpoint, new_model, save_checkpoint
from rmkernels.tasks.text.data import PROMPT_WIDTH, full_rows
from rmkernels.tasks.text.problems import generate_problems, random_expression, split_of
from rmkernels.tasks.text.tokenizer import MASK_ID, VOCAB_SIZE


@dataclass
class PretrainConfig:
    steps: int = 6000
    batch_size: int = 64
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    weighting: str = "token"  # "token" | "1/t"
    seed: int = 0  # model init and per-step randomness
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_hidden_size: int = 384
    eval_every: int = 500
    ckpt_every: int = 100
    val_problems: int = 200
    val_seed: int = 7  # val expressions: generate_problems("val", val_problems, val_seed)
    t_power: float = 1.0  # masking ratio t = u ** t_power, u ~ U(0, 1) (> 1: more rows with most of the work visible)
    suffix_fraction: float = 0.0  # share of rows masked from a uniform window position to the end (prefix visible)
    easy_fraction: float = 0.0  # share of training expressions whose operands have a uniform number of digits
    init: str = ""  # start from this state.pt / checkpoint directory (model weights only)
    stop_at: int = 0  # stop at this step (the schedule still spans `steps`); 0: run to `steps`
    kernels: str = "auto"  # impl of the decoder's ops in the val decodes
    max_minutes: float = 0.0  # stop after this much wall time in this invocation (0: no limit); resume later


def easy_expression(rng: np.random.Generator) -> str:
    """A task expression whose operands (other than the digits of ``*``) first draw their number of
    digits uniformly from 1-3, then a value with that many digits: small numbers are as common as
    large ones (a training mix; the test distribution is :func:`random_expression`'s)."""
    from rmkernels.tasks.text.problems import MAX_OPERANDS, MIN_OPERANDS, MUL_DIGITS, OPS

    def operand():
        d = int(rng.integers(1, 4))
        return int(rng.integers(0 if d == 1 else 10 ** (d - 1), 10 ** d))

    s = str(operand())
    for _ in range(int(rng.integers(MIN_OPERANDS, MAX_OPERANDS + 1)) - 1):
        op = OPS[int(rng.integers(0, 3))]
        s += f"{op}{int(rng.integers(MUL_DIGITS[0], MUL_DIGITS[1] + 1)) if op == '*' else operand()}"
    return s


def train_expressions(n: int, rng: np.random.Generator, easy_fraction: float = 0.0) -> list[str]:
    """``n`` train-split expressions drawn from ``rng`` (val and test ones rejected by the hash rule),
    a share ``easy_fraction`` of them from :func:`easy_expression`."""
    out = []
    while len(out) < n:
        e = easy_expression(rng) if easy_fraction and rng.random() < easy_fraction else random_expression(rng)
        if split_of(e) == "train":
            out.append(e)
    return out


def mdm_loss(model, expressions, rng: np.random.Generator, weighting: str = "token", t_power: float = 1.0,
             suffix_fraction: float = 0.0) -> torch.Tensor:
    """The masked-diffusion loss of one batch (module docstring). A share ``suffix_fraction`` of
    the rows is masked from a uniformly drawn window position to the end instead (the work before
    it visible: the state of a left-to-right decode)."""
    ids, gen = full_rows(expressions)  # [B, L]
    B, L = ids.shape
    t = torch.from_numpy(rng.random(B) ** t_power).float()  # [B]
    u = torch.from_numpy(rng.random((B, L))).float()
    masked = gen & (u < t[:, None])
    start = torch.from_numpy(rng.integers(PROMPT_WIDTH, L, size=B))  # [B]
    suffix = torch.from_numpy(rng.random(B) < suffix_fraction)  # [B]
    pos = torch.arange(L)[None, :]
    masked = torch.where(suffix[:, None], pos >= start[:, None], masked)
    masked[torch.arange(B), start] = True  # >= 1 per row
    if weighting == "1/t":
        t = torch.where(suffix, (L - start).float() / gen.sum(1), t)
    logits = model(input_ids=torch.where(masked, MASK_ID, ids)).logits  # [B, L, V]
    ce = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE).float(), ids.reshape(-1), reduction="none").view(B, L)
    ce = ce * masked
    if weighting == "token":
        return ce.sum() / masked.sum()
    if weighting == "1/t":
        return (ce.sum(1) / (t.clamp(min=1e-3) * gen.sum(1))).mean()
    raise ValueError(f"weighting must be 'token' or '1/t', got {weighting!r}")


@torch.no_grad()
def val_stats(model, expressions, values, ks=(4,), norm=None, meta=None, sampler: str = "low_confidence",
              kernels: str = "auto") -> dict:
    """Answer accuracy (and replay %, re-masks, calls for re-masking samplers) on val problems at each K."""
    from rmkernels.tasks.text.evaluate import evaluate_system

    out = {}
    for k in ks:
        m, *_ = evaluate_system("val", sampler, k, expressions, values, loaded=(model, norm, meta or {}), kernels=kernels)
        out[f"acc@K{k}"] = round(m["accuracy_pct"], 2)
        if sampler != "low_confidence":
            out[f"replay@K{k}"] = round(m["replay_pct"], 3)
            out[f"remasks@K{k}"] = round(m["remasks_per_problem"], 3)
            out[f"calls@K{k}"] = round(m["mean_calls"], 2)
    return out


def _save_state(path: str, model, opt, step: int) -> None:
    atomic_write(path, lambda tmp: torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, tmp))


def pretrain(cfg: PretrainConfig, out_dir: str, log=print, resume: bool = True, progress: bool = True) -> str:
    """Pretrain the base MDM; writes ``out_dir/model`` (checkpoint directory), ``state.pt`` and
    ``metrics.jsonl``; returns the checkpoint directory (``None`` if ``max_minutes`` stopped it first)."""
    from tqdm.auto import tqdm

    from rmkernels.tasks.text.problems import evaluate

    claim_run_dir(out_dir, {"stage": "base", "config": {k: v for k, v in asdict(cfg).items()
                                                        if k not in ("max_minutes", "kernels", "stop_at")}})
    torch.manual_seed(cfg.seed)
    model = new_model(d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.n_heads,
                      mlp_hidden_size=cfg.mlp_hidden_size)
    if cfg.init:
        if os.path.isdir(cfg.init):
            model.load_state_dict(load_checkpoint(cfg.init)[0].state_dict())
        else:
            model.load_state_dict(torch.load(cfg.init, weights_only=True)["model"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    state_path, start = os.path.join(out_dir, "state.pt"), 0
    if resume and os.path.exists(state_path):
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
        log(f"resumed from step {start}")
    meta = {"kind": "base", "config": asdict(cfg), "command": " ".join(sys.argv),
            "params": sum(p.numel() for p in model.parameters())}
    ckpt = os.path.join(out_dir, "model")
    end = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    if start >= end:
        if not os.path.exists(os.path.join(ckpt, "config.json")):  # stopped by a kill at a saved state
            if start != end:
                raise ValueError(f"{state_path} is at step {start}, past stop_at={end}: use a new out_dir")
            meta.update(step=start)
            save_checkpoint(ckpt, model, meta)
        return ckpt
    val = generate_problems("val", cfg.val_problems, cfg.val_seed)
    val_values = [evaluate(e) for e in val]
    metrics_path = os.path.join(out_dir, "metrics.jsonl")
    wall_before = 0.0
    if start and os.path.exists(metrics_path):
        with open(metrics_path) as f:
            rows = [json.loads(x) for x in f if x.strip()]
        rows = [r for r in rows if r["step"] <= start]
        wall_before = rows[-1]["wall_s"] if rows else 0.0
    t0 = time.time()
    model.train()
    recent = []
    bar = tqdm(total=end, initial=start, desc="text base", dynamic_ncols=True, mininterval=10, disable=not progress)
    step = start
    try:
        for step in range(start, end):
            rng = np.random.default_rng([cfg.seed, step])
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            loss = mdm_loss(model, train_expressions(cfg.batch_size, rng, cfg.easy_fraction), rng, cfg.weighting,
                            cfg.t_power, cfg.suffix_fraction)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            recent.append(float(loss.detach()))
            bar.update(1)
            done = step + 1
            if done % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(recent[-20:]):.4f}")
            wall = wall_before + time.time() - t0
            if done % cfg.eval_every == 0 or done == end:
                model.eval()
                row = {"step": done, "loss": round(float(np.mean(recent)), 4), "lr": lr_at(step, cfg),
                       "wall_s": round(wall, 1), **val_stats(model, val, val_values, kernels=cfg.kernels)}
                model.train()
                recent = []
                bar.write(json.dumps(row))
                log_line = json.dumps(row) + "\n"
                with open(metrics_path, "a") as f:
                    f.write(log_line)
            if done % cfg.ckpt_every == 0 or done == end:
                _save_state(state_path, model, opt, done)
                if done == end:
                    meta.update(step=done, wall_s=round(wall, 1))
                    save_checkpoint(ckpt, model, meta)
            if cfg.max_minutes and time.time() - t0 > 60 * cfg.max_minutes and done < end:
                _save_state(state_path, model, opt, done)
                log(f"stopped after {cfg.max_minutes} min at step {done}; run the same command to resume")
                return None
    finally:
        bar.close()
    return ckpt


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    from rmkernels.training.variants import VARIANTS
    from rmkernels.tasks.text.posttrain import PostTrainConfig

    p = p or argparse.ArgumentParser(prog="python -m rmkernels.tasks.text.train")
    sub = p.add_subparsers(dest="stage", required=True)
    b = sub.add_parser("base", help="pretrain the base MDM on train problems with their work")
    b.add_argument("--out", required=True, help="run directory (checkpoint, state, metrics)")
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--no-resume", action="store_true")
    add_dataclass_args(b, PretrainConfig)
    v = sub.add_parser("variant", help="post-train one RM variant from the base MDM")
    v.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    v.add_argument("--base", required=True, help="base checkpoint directory")
    v.add_argument("--out", required=True, help="run directory (checkpoint, trainer states, metrics)")
    v.add_argument("--threads", type=int, default=1)
    add_dataclass_args(v, PostTrainConfig)
    e = sub.add_parser("export", help="re-save a checkpoint for shipping (fp16 storage by default)")
    e.add_argument("--src", required=True)
    e.add_argument("--dst", required=True)
    e.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    a = sub.add_parser("all", help="the whole recipe: base, the four variants, fp16 export (resumable)")
    a.add_argument("--out", required=True, help="folder of the runs (base/, rm/, ...; export/ holds the fp16 copies)")
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--base-steps", type=int, default=PretrainConfig.steps)
    a.add_argument("--variant-steps", type=int, default=PostTrainConfig.steps)
    a.add_argument("--variants", default="rm,rm_hist,rm_hist_decay,full")
    a.add_argument("--ship", action="store_true", help="also copy the fp16 checkpoints into the package's assets/")
    return p


def export(src: str, dst: str, dtype=torch.float16) -> str:
    """Re-save checkpoint directory ``src`` as ``dst`` with tensors stored in ``dtype``."""
    model, norm, meta = load_checkpoint(src)
    return save_checkpoint(dst, model, meta, history_norm=norm, dtype=dtype)


def run(args) -> int:
    from rmkernels.tasks.text.posttrain import PostTrainConfig, posttrain

    torch.set_num_threads(getattr(args, "threads", 1))
    log = lambda s: print(s, flush=True)  # noqa: E731
    if args.stage == "base":
        cfg = PretrainConfig(**{k: getattr(args, k) for k in PretrainConfig.__dataclass_fields__})
        path = pretrain(cfg, args.out, log=log, resume=not args.no_resume)
    elif args.stage == "variant":
        cfg = PostTrainConfig(**{k: getattr(args, k) for k in PostTrainConfig.__dataclass_fields__})
        path = posttrain(args.variant, args.base, args.out, cfg, log=log)
    elif args.stage == "export":
        path = export(args.src, args.dst, getattr(torch, args.dtype))
    else:  # all
        from rmkernels.tasks.text.checkpoint import shipped

        base = pretrain(PretrainConfig(steps=args.base_steps), os.path.join(args.out, "base"), log=log)
        variants = [v for v in args.variants.split(",") if v]
        exports = {"base": base}
        for v in variants:
            exports[v] = posttrain(v, base, os.path.join(args.out, v), PostTrainConfig(steps=args.variant_steps), log=log)
        for name, src in exports.items():
            dst = export(src, os.path.join(args.out, "export", name))
            if args.ship:
                export(dst, shipped(name))
            log(f"exported {name}: {dst}")
        path = os.path.join(args.out, "export")
    if path is not None:
        print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run(build_parser().parse_args()))
