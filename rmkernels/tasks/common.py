"""Task-independent pieces shared by the task packages (Sudoku, text, ...).

* the RM variants and their History Reference settings (:data:`VARIANTS`, :func:`variant_settings`,
  :func:`her_gain`);
* the warmup + cosine schedule of the pretraining loops (:func:`lr_at`);
* run directories that refuse to be resumed with other settings (:func:`claim_run_dir`);
* argparse flags from a dataclass (:func:`add_dataclass_args`);
* paired comparisons of two systems on the same items, with a verdict (:func:`paired_stats`,
  :func:`verdict`);
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

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

    Example
    -------
    >>> variant_settings("rm_hist_decay", 0.5)
    {'history_steps': 6, 'history_decay': 0.5, 'history_rotate': False}
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    steps, use_decay, rotate = VARIANTS[variant]
    return {"history_steps": steps, "history_decay": float(decay) if use_decay else 0.0, "history_rotate": rotate}


def her_gain(spec: str, model) -> float:
    """Initial HER gain: ``"rms"`` = the RMS of the token embeddings the residual is added to, or a number."""
    if spec == "rms":
        return float(model.get_input_embeddings().weight.detach().pow(2).mean().sqrt())
    try:
        return float(spec)
    except ValueError:
        raise ValueError(f"her_gain must be 'rms' or a number, got {spec!r}") from None


def lr_at(step: int, cfg) -> float:
    """Linear warmup over ``cfg.warmup`` steps, then cosine decay to ``cfg.min_lr_ratio * cfg.lr`` at ``cfg.steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def claim_run_dir(out_dir: str, run: dict) -> None:
    """Record ``run`` in ``out_dir/run.json``; a directory holding another run is refused, since the
    trainers resume from whatever checkpoints ``out_dir`` holds."""
    path = os.path.join(out_dir, "run.json")
    if os.path.exists(path):
        with open(path) as f:
            held = json.load(f)
        if held != json.loads(json.dumps(run)):
            diff = sorted(k for k in set(held.get("config", {})) | set(run.get("config", {}))
                          if held.get("config", {}).get(k) != run.get("config", {}).get(k))
            diff += [k for k in run if k != "config" and held.get(k) != run[k]]
            raise ValueError(f"out_dir {out_dir} holds a run with other settings ({', '.join(map(str, diff))}); "
                             "use a new out_dir, or the same settings to resume it")
        return
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(run, indent=1)))  # creates out_dir


def add_dataclass_args(p: argparse.ArgumentParser, cls, prefix: str = "") -> None:
    """One ``--<prefix>field-name`` flag per dataclass field, typed and defaulted by the field's
    default, stored as ``<prefix>field_name`` (``prefix`` with ``-`` as ``_``)."""
    for name, field in cls.__dataclass_fields__.items():
        p.add_argument("--" + prefix + name.replace("_", "-"), dest=prefix.replace("-", "_") + name,
                       type=type(field.default), default=field.default)


def paired_stats(diffs) -> tuple[float, float]:
    """Mean and paired standard error (``std / sqrt(n)``) of per-item differences ``b - a``."""
    import torch

    d = torch.as_tensor(diffs, dtype=torch.float64).flatten()
    if d.numel() < 2:
        raise ValueError(f"a paired standard error needs at least 2 items, got {d.numel()}")
    return float(d.mean()), float(d.std()) / math.sqrt(d.numel())


def verdict(diff: float, se: float, relation: str, z: float = 2.0) -> str:
    """Verdict on a published relation ``a < b`` or ``a <= b`` from ``diff = b - a`` and its SE:
    ``holds`` beyond ``z`` SE, ``reversed`` beyond ``z`` SE the other way, else unresolved
    (``<``) or not contradicted (``<=``)."""
    if diff > z * se:
        return "holds"
    if diff < -z * se:
        return "reversed"
    return f"unresolved (within {z:g} SE)" if relation == "<" else f"not contradicted (within {z:g} SE)"


__all__ = ["HISTORY_STEPS", "VARIANTS", "add_dataclass_args", "claim_run_dir", "her_gain", "lr_at",
           "paired_stats", "variant_settings", "verdict"]
