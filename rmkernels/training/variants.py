"""The RM post-training variants every task trains (docs/spec.md §5) and the helpers of a variant's run.

| variant | history | decay | rotation |
|---|---|---|---|
| ``rm`` | - | - | - |
| ``rm_hist`` | 6 states | 0 | no |
| ``rm_hist_decay`` | 6 states | ``decay`` | no |
| ``full`` | 6 states | ``decay`` | yes |
"""
from __future__ import annotations

import json
import os

from rmkernels._utils import atomic_write

HISTORY_STEPS = 6
VARIANTS = {  # name -> (history_steps, use decay, rotate)
    "rm": (0, False, False),
    "rm_hist": (HISTORY_STEPS, False, False),
    "rm_hist_decay": (HISTORY_STEPS, True, False),
    "full": (HISTORY_STEPS, True, True),
}


def variant_settings(variant: str, decay: float) -> dict:
    """The History Reference settings (training and decoding) of a variant.

    Parameters
    ----------
    variant : one of :data:`VARIANTS`
    decay : float
        The history decay ``lambda`` of the ``*_decay`` and ``full`` variants.

    Returns
    -------
    dict
        ``history_steps``, ``history_decay``, ``history_rotate`` (``DecodeConfig`` / ``TrainConfig`` fields).

    Example
    -------
    >>> variant_settings("full", 0.5)
    {'history_steps': 6, 'history_decay': 0.5, 'history_rotate': True}
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    steps, use_decay, rotate = VARIANTS[variant]
    return {"history_steps": steps, "history_decay": float(decay) if use_decay else 0.0, "history_rotate": rotate}


def variant_train_config(cfg, out_dir: str, settings: dict | None = None, *, keep_weight: float = 1.0,
                         log_every: int = 0, progress: bool = False):
    """The :class:`~rmkernels.training.TrainConfig` of a task's training run.

    Parameters
    ----------
    cfg : a task's training config
        Any object with ``lr``, ``weight_decay``, ``warmup``, ``steps``, ``min_lr_ratio``,
        ``batch_size``, ``eval_every``, ``ckpt_every``, ``seed`` and ``kernels`` (the ``impl`` of the
        loss and HER kernels).
    out_dir : str
        The run's folder; checkpoints go to ``out_dir/ckpt``.
    settings : dict, optional
        :func:`variant_settings` of the variant; ``None``: no History Reference (pretraining).
    keep_weight : float
        Loss weight of the keep part (reveal and mask parts weigh 1).
    log_every, progress
        As in ``TrainConfig``.

    Returns
    -------
    TrainConfig

    Example
    -------
    >>> from types import SimpleNamespace
    >>> c = SimpleNamespace(lr=1e-3, weight_decay=0.01, warmup=10, steps=100, min_lr_ratio=0.1,
    ...                     batch_size=8, eval_every=50, ckpt_every=50, seed=0, kernels="auto")
    >>> variant_train_config(c, "runs/x", variant_settings("full", 0.5)).history_steps
    6
    """
    from rmkernels.training.trainer import TrainConfig

    settings = settings or {}
    return TrainConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup, total_steps=cfg.steps,
                       min_lr_ratio=cfg.min_lr_ratio, batch_size=cfg.batch_size, bf16=False,
                       history_steps=settings.get("history_steps", 0),
                       history_decay=settings.get("history_decay", 0.0),
                       history_rotate=settings.get("history_rotate", False), log_every=log_every,
                       eval_every=cfg.eval_every, ckpt_every=cfg.ckpt_every, ckpt_dir=os.path.join(out_dir, "ckpt"),
                       seed=cfg.seed, progress=progress, loss_impl=cfg.kernels, history_impl=cfg.kernels,
                       loss_weights=(1.0, 1.0, keep_weight))


def her_gain(spec: str, model) -> float:
    """Initial HER LayerNorm gain: ``"rms"`` = the RMS of the token embeddings the residual is
    added to, or a number (``"0"``: the history variants start as the RM model)."""
    if spec == "rms":
        return float(model.get_input_embeddings().weight.detach().pow(2).mean().sqrt())
    try:
        return float(spec)
    except ValueError:
        raise ValueError(f"her_gain must be 'rms' or a number, got {spec!r}") from None


def claim_run_dir(out_dir: str, run: dict) -> None:
    """Record ``run`` (e.g. ``variant``, ``base``, ``config``) in ``out_dir/run.json``; a directory
    holding another run is refused, naming the settings that differ, since the trainers resume from
    whatever checkpoints ``out_dir`` holds (every task's pretraining and post-training runs)."""
    path = os.path.join(out_dir, "run.json")
    if os.path.exists(path):
        with open(path) as f:
            held = json.load(f)
        if held != json.loads(json.dumps(run)):
            diff = sorted(k for k in set(held.get("config", {})) | set(run.get("config", {}))
                          if held.get("config", {}).get(k) != run.get("config", {}).get(k))
            diff += sorted(k for k in set(held) | set(run) if k != "config" and held.get(k) != run.get(k))
            raise ValueError(f"out_dir {out_dir} holds a run with other settings ({', '.join(diff)}); "
                             "use a new out_dir, or the same settings to resume it")
        return
    atomic_write(path, json.dumps(run, indent=1))  # creates out_dir


__all__ = ["HISTORY_STEPS", "VARIANTS", "claim_run_dir", "her_gain", "variant_settings", "variant_train_config"]
