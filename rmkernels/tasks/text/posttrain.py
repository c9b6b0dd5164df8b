"""Reflective Masking post-training of the arithmetic variants from the base MDM (SPEC §4).

Every variant starts from the same base checkpoint and sees the same data: gold rows of train
expressions (prompt + window), each with a uniform number of noisy window positions (1 to the
whole window), each noisy position wrong with probability ``wrong_fraction`` (the wrong token
drawn uniformly from the frozen base model's top-k, gold and mask excluded) or masked; a
``frames``-step synthetic trajectory and oracle labels (:mod:`rmkernels.training`): reveal ``M``
-> gold, re-mask wrong -> ``M``, keep correct. They differ only in History Reference
(:data:`rmkernels.training.variants.VARIANTS`: ``rm`` none; ``rm_hist`` 6 states; ``rm_hist_decay``
with decay; ``full`` with decay and rotation).

One addition for text (:class:`TextRMData`): in SPEC §4 trajectories a wrong token is there from
the first frame, while a parallel decoder's wrong tokens are *fresh reveals*. With probability
``wrong_reveal_prob`` a wrong position whose re-mask frame ``a`` is >= 2 is masked on frames
``[0, r1)`` and wrong on ``[r1, a)`` (``1 <= r1 < a``): the transition masked -> wrong -> M ->
gold, so a history shows wrong tokens appearing as the decoder makes them. Labels and histories
come from the edited frames (:func:`rmkernels.training.make_batch`), so everything else follows
SPEC §4; with ``wrong_reveal_prob = 0`` the batches equal :class:`rmkernels.training.SynthData`'s.

The HER LayerNorm's gain starts at ``her_gain`` (``0``: the history variants start as the RM model
and learn how much history to add).
"""
from __future__ import annotations

import copy
import glob
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from rmkernels.history import HistoryNorm
from rmkernels.training.variants import HISTORY_STEPS, claim_run_dir, her_gain, variant_settings, variant_train_config
from rmkernels.tasks.text.checkpoint import load_checkpoint, save_checkpoint
from rmkernels.tasks.text.data import GEN_LENGTH, full_rows
from rmkernels.tasks.text.tokenizer import MASK_ID, VOCAB_SIZE


@dataclass
class PostTrainConfig:
    steps: int = 600
    batch_size: int = 32
    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.01
    decay: float = 0.5  # history decay lambda of the *_decay and full variants
    wrong_fraction: float = 0.25
    wrong_reveal_prob: float = 0.5
    topk: int = 4
    frames: int = 6
    seed: int = 0
    targets: int = 50000  # train expressions the synthesis draws from (fresh corruption every step)
    targets_seed: int = 11
    keep_weight: float = 1.0  # w_keep of the loss (SPEC §4)
    her_gain: str = "0"
    eval_every: int = 200
    ckpt_every: int = 100
    val_problems: int = 200
    val_seed: int = 7
    kernels: str = "auto"  # impl of the loss and history_embed ops


class TextRMData:
    """SPEC §4 synthesis (:class:`rmkernels.training.SynthData`) plus wrong reveals (module docstring)."""

    def __init__(self, targets, answer_mask, config, *, base_model=None, seed: int = 0,
                 wrong_reveal_prob: float = 0.5):
        from rmkernels.training import SynthData

        if not 0.0 <= wrong_reveal_prob <= 1.0:
            raise ValueError(f"wrong_reveal_prob must be in [0, 1], got {wrong_reveal_prob}")
        self.synth = SynthData(targets, answer_mask, MASK_ID, config, base_model=base_model, seed=seed,
                               vocab_size=VOCAB_SIZE)
        self.vocab_size, self.mask_id, self.history_steps = VOCAB_SIZE, MASK_ID, self.synth.history_steps
        self.seed, self.wrong_reveal_prob = int(seed), float(wrong_reveal_prob)

    def __len__(self) -> int:
        return len(self.synth)

    def fetch(self, indices, step: int = 0):
        from rmkernels.reference.rng import uniform_noise
        from rmkernels.training import build_trajectories, make_batch
        from rmkernels.training.data import step_seed
        from rmkernels.training.synth import KIND_WRONG

        s = self.synth
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        gold, am = s.targets[idx], s.answer_mask[idx]
        traj = build_trajectories(gold, am, s.base_model, MASK_ID, s.config, seed=step_seed(self.seed, step),
                                  row_ids=idx, vocab_size=VOCAB_SIZE)
        if self.wrong_reveal_prob > 0:
            B, T, L = traj.frames.shape
            u = uniform_noise(step_seed(self.seed + 1, step), idx, 2 * L).view(B, 2, L)
            a = traj.mask_at  # [B, L] frame of the re-mask (wrong positions)
            edit = (traj.kind == KIND_WRONG) & (a >= 2) & (u[:, 0] < self.wrong_reveal_prob)
            r1 = 1 + torch.minimum((u[:, 1].double() * (a - 1).clamp(min=1)).long(), (a - 2).clamp(min=0))  # [1, a-1]
            f = torch.arange(T)[None, :, None]
            frames = torch.where(edit[:, None] & (f < r1[:, None]), MASK_ID, traj.frames)
            traj.frames = frames
        return make_batch(traj, gold, am, MASK_ID, s.config.history_steps)


def _prune(ckpt_dir: str) -> None:
    """Keep only the newest trainer checkpoint."""
    files = sorted(glob.glob(os.path.join(ckpt_dir, "step_*.pt")))
    for f in files[:-1]:
        os.remove(f)


def posttrain(variant: str, base_path: str, out_dir: str, cfg: PostTrainConfig, log=print) -> str:
    """Post-train one variant; writes the checkpoint directory ``out_dir/model`` and returns it.

    Every ``eval_every`` steps it logs the loss parts and RM decoding on ``val_problems`` val
    problems at K = 4 (accuracy, replay %, re-masks, calls) to ``metrics.jsonl``.
    """
    from rmkernels.tasks.text.problems import evaluate, generate_problems
    from rmkernels.tasks.text.train import val_stats
    from rmkernels.training import SynthConfig, Trainer

    settings = variant_settings(variant, cfg.decay)
    if not (math.isfinite(cfg.keep_weight) and cfg.keep_weight > 0):
        raise ValueError(f"keep_weight must be finite and > 0, got {cfg.keep_weight}")
    claim_run_dir(out_dir, {"variant": variant, "base": os.path.abspath(base_path), "config": asdict(cfg)})
    ckpt = os.path.join(out_dir, "model")
    if os.path.exists(os.path.join(ckpt, "config.json")):
        with open(os.path.join(ckpt, "rmk.json")) as f:
            if json.load(f).get("steps") == cfg.steps:
                return ckpt
    base, _, base_meta = load_checkpoint(base_path)
    for p in base.parameters():
        p.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    H = settings["history_steps"]
    model = copy.deepcopy(base)
    norm = HistoryNorm(model.config.d_model) if H else None
    if norm is not None:
        with torch.no_grad():
            norm.weight.fill_(her_gain(cfg.her_gain, model))
    for p in model.parameters():
        p.requires_grad_(True)
    from rmkernels.tasks.text.train import train_expressions

    exprs = train_expressions(cfg.targets, np.random.default_rng([cfg.targets_seed, 0]))
    targets, am = full_rows(exprs)
    synth = SynthConfig(corruption_rate=None, corruption_count=(1, GEN_LENGTH), wrong_fraction=cfg.wrong_fraction,
                        topk=cfg.topk, frames=cfg.frames, history_steps=HISTORY_STEPS)
    data = TextRMData(targets, am, synth, base_model=base, seed=cfg.seed, wrong_reveal_prob=cfg.wrong_reveal_prob)
    val = generate_problems("val", cfg.val_problems, cfg.val_seed)
    val_values = [evaluate(e) for e in val]
    metrics_path = os.path.join(out_dir, "metrics.jsonl")
    t0 = time.time()

    def hook(trainer):
        recent = trainer.log[-cfg.eval_every:]
        row = {"step": trainer.step, "wall_s": round(time.time() - t0, 1)}
        row.update({k: round(sum(r[k] for r in recent) / len(recent), 4) for k in ("loss", "reveal", "mask", "keep")})
        row.update(val_stats(trainer.model, val, val_values, ks=(4,), norm=trainer.history_norm,
                             meta={"decode": settings}, sampler="rm", kernels=cfg.kernels))
        log(json.dumps(row))
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        _prune(os.path.join(out_dir, "ckpt"))
        return row

    tcfg = variant_train_config(cfg, out_dir, settings, keep_weight=cfg.keep_weight, log_every=10, progress=True)
    trainer = Trainer(model, norm, data, tcfg, eval_fn=hook)
    trainer.fit(resume=True)
    _prune(os.path.join(out_dir, "ckpt"))
    meta = {
        "kind": "rm_variant", "variant": variant, "decode": settings, "config": asdict(cfg), "synth": synth.to_dict(),
        "base": {"path": base_path, "config": base_meta.get("config"), "wall_s": base_meta.get("wall_s"),
                 "command": base_meta.get("command")},
        "command": " ".join(sys.argv), "wall_s": round(time.time() - t0, 1), "steps": trainer.step,
    }
    return save_checkpoint(ckpt, model, meta, history_norm=norm)


__all__ = ["PostTrainConfig", "TextRMData", "posttrain"]
