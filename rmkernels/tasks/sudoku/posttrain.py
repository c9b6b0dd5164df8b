"""Reflective Masking post-training of the Sudoku variants from the base MDM (docs/spec.md §4, §5).

Every variant starts from the same base checkpoint and sees the same data: solution grids of the
train split, each with 4-20 noisy cells (wrong digits drawn uniformly from the base model's top-k
with the gold digit excluded; for k >= 8 that is every other digit; or masked), a 6-frame
synthetic trajectory and oracle labels (:mod:`rmkernels.training`), plus the decoder's own kinds
of mistakes (swapped pairs, wrong reveals: :mod:`rmkernels.tasks.sudoku.synth`). They differ only in History Reference:

| variant | history | decay | rotation |
|---|---|---|---|
| ``rm`` | - | - | - |
| ``rm_hist`` | 6 states | 0 | no |
| ``rm_hist_decay`` | 6 states | ``decay`` | no |
| ``full`` | 6 states | ``decay`` | yes |

The shipped variants are trained in two stages: ``keep_weight`` 1 from the base, then ``init`` =
that checkpoint with ``keep_weight`` 8 (``w_keep`` of docs/spec.md §4: the model then re-masks a digit only
when it is more than 8/9 sure it is wrong, which cuts replays of correct digits 25x). A further
stage can mix in the decoder's own failed states (``onpolicy_boards``,
:mod:`rmkernels.tasks.sudoku.onpolicy`).

The HER LayerNorm's gain starts at ``her_gain``: ``0`` (the history variants start as the RM model
and learn how much history to add), or ``"rms"``, the RMS of the token embeddings the residual is
added to. Never 1: a unit-scale residual swamps the pretrained model's input.
"""
from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from rmkernels.history import HistoryNorm
from rmkernels.tasks.sudoku.checkpoint import load_checkpoint, save_checkpoint
from rmkernels.tasks.sudoku.data import DEFAULT_SEED, make_boards, split_rng
from rmkernels.tasks.sudoku.grids import DIGITS, MASK_ID, sample_grids, seed_grids
from rmkernels.tasks.sudoku.synth import SudokuRMData
from rmkernels.training.variants import HISTORY_STEPS, VARIANTS, her_gain, variant_settings
from rmkernels.training.variants import claim_run_dir, variant_train_config

ONPOLICY_LABELS = ("solution", "canonical", "anchored")


@dataclass
class PostTrainConfig:
    steps: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 200
    weight_decay: float = 0.01
    decay: float = 0.5  # history decay lambda of the *_decay and full variants
    wrong_fraction: float = 0.9  # eval boards start all-wrong (up to 20 wrong digits): mostly wrong noise, some masked
    pair_prob: float = 0.5  # decoder-mistake synthesis (rmkernels.tasks.sudoku.synth); 0 and 0 = docs/spec.md §4 only
    wrong_reveal_prob: float = 0.5
    # labels of a synthesized swapped pair that is half of a swappable rectangle: "solution" (the generator's
    # grid, a coin flip between two equally near grids) or "anchored" (rmkernels.tasks.sudoku.synth)
    pair_labels: str = "solution"
    topk: int = 8
    frames: int = 6
    seed: int = 0
    data_seed: int = DEFAULT_SEED
    pool_size: int = 4096
    targets: int = 65536  # solution grids the synthesis draws from (fresh corruption every step)
    eval_every: int = 1000
    ckpt_every: int = 500
    val_boards: int = 256
    kernels: str = "auto"  # impl of the loss and history_embed ops
    her_gain: str = "0"  # initial HER LayerNorm gain: "rms" (of the token embeddings) or a number
    keep_weight: float = 1.0  # w_keep of the loss (docs/spec.md §4); > 1 re-masks only cells more likely wrong than w/(1+w)
    init: str = ""  # start from this checkpoint of the same variant (model + HER norm) instead of the base
    onpolicy_boards: int = 0  # decode this many train-split boards with the init model; mix in its failed states
    onpolicy_rows: int = 16  # rows of each batch that are such states (rmkernels.tasks.sudoku.onpolicy)
    # labels of those states: "solution" (the generator's), "canonical" (the smallest of the valid grids
    # nearest to the input) or "anchored" (of those grids, the one nearest the state the decoder stopped in,
    # ties to the grid keeping its earliest digits); rmkernels.tasks.sudoku.ceiling.canonical_solutions, needs ortools
    onpolicy_labels: str = "solution"


@torch.no_grad()
def detection_stats(model, corrupted: np.ndarray, solution: np.ndarray) -> dict:
    """First-step re-mask quality on corrupted boards (no history yet): recall of wrong cells
    (``p(M) > p(current)``) and the share of correct cells re-masked."""
    p = torch.softmax(model(input_ids=torch.from_numpy(corrupted)).float(), -1)  # [N, 81, V]
    cur = p.gather(2, torch.from_numpy(corrupted)[..., None])[..., 0]
    remask = (p[..., MASK_ID] > cur).numpy()
    wrong = corrupted != solution
    return {"recall": float(remask[wrong].mean()), "false_remask": float(remask[~wrong].mean())}


@torch.no_grad()
def decode_stats(model, norm, settings: dict, corrupted: np.ndarray, solution: np.ndarray, kernels: str) -> dict:
    """Exact %, replay % and mean steps of full RM decoding (the variant's history) on some boards."""
    from rmkernels.tasks.sudoku.evaluate import decode_boards, decode_config
    from rmkernels.tasks.sudoku.metrics import board_metrics

    cfg = decode_config({"decode": settings})
    final, steps, traj = decode_boards(model, norm, torch.from_numpy(corrupted), cfg, kernels=kernels)
    m = board_metrics(final, solution, steps, traj)
    return {k: round(m[k], 3) for k in ("exact_pct", "replay_pct", "conflicts_per_board", "mean_steps")}


def posttrain(variant: str, base_path: str, out_dir: str, cfg: PostTrainConfig, log=print, progress: bool = False) -> str:
    """Post-train one variant; writes ``out_dir/model.safetensors`` (+ .json) and returns its path.

    Every ``eval_every`` steps it logs the loss parts, :func:`detection_stats` and
    :func:`decode_stats` on ``val_boards`` boards of the val split (``metrics.jsonl``).
    """
    from rmkernels.training import SynthConfig, Trainer

    settings = variant_settings(variant, cfg.decay)
    if not (math.isfinite(cfg.keep_weight) and cfg.keep_weight > 0):
        raise ValueError(f"keep_weight must be finite and > 0, got {cfg.keep_weight}")
    if cfg.onpolicy_boards < 0 or (cfg.onpolicy_boards and not 1 <= cfg.onpolicy_rows < cfg.batch_size):
        raise ValueError(f"onpolicy_boards must be >= 0 and onpolicy_rows in [1, batch_size), got "
                         f"{cfg.onpolicy_boards} and {cfg.onpolicy_rows} (batch_size {cfg.batch_size})")
    if cfg.onpolicy_labels not in ONPOLICY_LABELS:
        raise ValueError(f"onpolicy_labels must be one of {ONPOLICY_LABELS}, got {cfg.onpolicy_labels!r}")
    if cfg.onpolicy_boards and not cfg.init:
        raise ValueError("onpolicy_boards needs init: the states come from decoding with a trained variant")
    base, _, base_meta = load_checkpoint(base_path)
    for p in base.parameters():
        p.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    H = settings["history_steps"]
    init_meta = None
    if cfg.init:
        model, norm, init_meta = load_checkpoint(cfg.init)
        if init_meta.get("variant") != variant or (norm is not None) != bool(H):
            raise ValueError(f"init {cfg.init!r} is a checkpoint of variant {init_meta.get('variant')!r}, not {variant!r}")
    else:
        model = copy.deepcopy(base)
        norm = HistoryNorm(model.config.dim) if H else None
        if norm is not None:
            with torch.no_grad():
                norm.weight.fill_(her_gain(cfg.her_gain, model))
    claim_run_dir(out_dir, {"variant": variant, "base": base_path, "config": asdict(cfg)})
    for p in model.parameters():
        p.requires_grad_(True)
    rng = split_rng("train", cfg.data_seed)
    targets = torch.from_numpy(sample_grids(seed_grids(cfg.pool_size, rng), cfg.targets, rng))  # [N, 81]
    synth = SynthConfig(corruption_rate=None, corruption_count=(4, 20), wrong_fraction=cfg.wrong_fraction,
                        topk=cfg.topk, frames=cfg.frames, history_steps=HISTORY_STEPS, wrong_ids=tuple(range(DIGITS)))
    # with topk >= 8 the base model's top-k over the 8 non-gold digits is all of them: the draw is
    # uniform either way, so the base forward is skipped (same distribution, ~25% less compute)
    proposer = base if cfg.topk < DIGITS - 1 else None
    data = SudokuRMData(targets, synth, base_model=proposer, seed=cfg.seed, pair_prob=cfg.pair_prob,
                        wrong_reveal_prob=cfg.wrong_reveal_prob, pair_labels=cfg.pair_labels)
    onpolicy = None
    if cfg.onpolicy_boards > 0:
        from rmkernels.tasks.sudoku.onpolicy import OnPolicyMix, collect_states

        t_c = time.time()
        oc, os_ = make_boards("train", cfg.onpolicy_boards, cfg.data_seed + 1, pool_size=1024)
        onpolicy = {"boards": cfg.onpolicy_boards, "labels": cfg.onpolicy_labels}
        states = collect_states(model, norm, settings, oc, os_, cfg.kernels)
        if cfg.onpolicy_labels != "solution":
            # only boards that end invalid are kept, and an invalid final differs from every valid
            # grid: which boards are kept does not depend on the labels, so only theirs are searched
            from rmkernels.tasks.sudoku.ceiling import canonical_solutions

            anchor = states.frames[:, -1].numpy() if cfg.onpolicy_labels == "anchored" else None  # [F, 81] final states
            gold, onpolicy["relabelled"] = canonical_solutions(states.frames[:, 0].numpy(), states.gold.numpy(), anchor)
            states.gold = torch.from_numpy(gold).long()
        data = OnPolicyMix(data, states, cfg.onpolicy_rows, seed=cfg.seed)
        onpolicy.update(failed=states.frames.shape[0], states=len(states), seconds=round(time.time() - t_c, 1))
        log(json.dumps({"onpolicy": onpolicy}))
    val_c, val_s = make_boards("val", cfg.val_boards, cfg.data_seed)
    metrics_path = os.path.join(out_dir, "metrics.jsonl")
    t0 = time.time()

    def hook(trainer):
        recent = trainer.log[-cfg.eval_every:]
        row = {"step": trainer.step, "wall_s": round(time.time() - t0, 1)}
        row.update({k: round(sum(r[k] for r in recent) / len(recent), 4) for k in ("loss", "reveal", "mask", "keep")})
        row.update(detection_stats(trainer.model, val_c, val_s))
        row.update(decode_stats(trainer.model, trainer.history_norm, settings, val_c, val_s, cfg.kernels))
        log(json.dumps(row))
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        return row

    tcfg = variant_train_config(cfg, out_dir, settings, keep_weight=cfg.keep_weight, progress=progress)
    trainer = Trainer(model, norm, data, tcfg, eval_fn=hook)
    trainer.fit(resume=True)
    meta = {
        "kind": "rm_variant", "variant": variant, "decode": settings, "config": asdict(cfg),
        "synth": synth.to_dict(), "base": {"path": base_path, "config": base_meta.get("config"),
                                            "wall_s": base_meta.get("wall_s"), "command": base_meta.get("command")},
        "command": " ".join(sys.argv), "wall_s": round(time.time() - t0, 1), "steps": trainer.step,
    }
    if onpolicy is not None:
        meta["onpolicy"] = onpolicy
    if init_meta is not None:  # the stage this one continues (and, recursively, its own first stage)
        meta["init"] = {k: init_meta.get(k) for k in ("config", "command", "wall_s", "steps", "init") if k in init_meta}
    return save_checkpoint(os.path.join(out_dir, "model.safetensors"), model, meta, history_norm=norm)


__all__ = ["PostTrainConfig", "VARIANTS", "decode_stats", "detection_stats", "posttrain", "variant_settings"]
