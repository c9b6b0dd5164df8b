"""Task-independent pieces shared by the task packages (Sudoku, text, image) that have no home in
the library layers (the RM variants, their HER settings and run directories are in
:mod:`rmkernels.training.variants`; checkpoint files in :mod:`rmkernels.models.checkpoint`):

* the warmup + cosine schedule of the pretraining loops (:func:`lr_at`);
* argparse flags from a dataclass (:func:`add_dataclass_args`);
* paired comparisons of two systems on the same items, with a verdict (:func:`paired_stats`,
  :func:`verdict`).
"""
from __future__ import annotations

import argparse
import math


def lr_at(step: int, cfg) -> float:
    """Linear warmup over ``cfg.warmup`` steps, then cosine decay to ``cfg.min_lr_ratio * cfg.lr`` at ``cfg.steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


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


__all__ = ["add_dataclass_args", "lr_at", "paired_stats", "verdict"]
