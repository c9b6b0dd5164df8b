"""Sudoku model checkpoints: the shared TinyMDM checkpoint format (:mod:`rmkernels.models.checkpoint`);
files without a model config are the first Sudoku models (vocabulary 10, 81 cells)."""
from __future__ import annotations

import torch

from rmkernels.models import TinyMDMConfig
from rmkernels.models import checkpoint as _shared
from rmkernels.models.checkpoint import _atomic_write, save_checkpoint

SUDOKU_DEFAULT_CONFIG = TinyMDMConfig(vocab_size=10, max_len=81)


def load_checkpoint(path: str, device="cpu"):
    """Returns ``(model, history_norm or None, metadata)``; the model is float32 in eval mode."""
    return _shared.load_checkpoint(path, device, default_config=SUDOKU_DEFAULT_CONFIG)


def export_checkpoint(src: str, dst: str, dtype: torch.dtype = torch.float16, extra: dict | None = None) -> str:
    """Re-save a checkpoint with tensors stored in ``dtype`` (:func:`rmkernels.models.checkpoint.export_checkpoint`)."""
    return _shared.export_checkpoint(src, dst, dtype, extra, default_config=SUDOKU_DEFAULT_CONFIG)


__all__ = ["_atomic_write", "export_checkpoint", "load_checkpoint", "save_checkpoint"]
