"""Sudoku model checkpoints: the shared TinyMDM checkpoint format (:mod:`rmkernels.models.checkpoint`:
one safetensors file + JSON metadata, written atomically); files without a model config are the
first Sudoku models (vocabulary 10, 81 cells)."""
from __future__ import annotations

import torch

from rmkernels.models import TinyMDMConfig
from rmkernels.models import checkpoint as shared
from rmkernels.models.checkpoint import save_checkpoint

SUDOKU_DEFAULT_CONFIG = TinyMDMConfig(vocab_size=10, max_len=81)


def load_checkpoint(path: str, device="cpu"):
    """Load a Sudoku checkpoint (:func:`rmkernels.models.checkpoint.load_checkpoint`).

    Parameters
    ----------
    path : str
        ``<stem>.safetensors`` (or ``<stem>``); ``<stem>.json`` next to it holds the metadata.
    device : str or torch.device

    Returns
    -------
    (TinyMDM, HistoryNorm or None, dict)
        The model (float32, eval mode), its HER LayerNorm, the metadata.

    Example
    -------
    >>> from rmkernels.tasks.sudoku.evaluate import checkpoint_path
    >>> model, norm, meta = load_checkpoint(checkpoint_path("full"))
    >>> meta["variant"], norm is not None
    ('full', True)
    """
    return shared.load_checkpoint(path, device, default_config=SUDOKU_DEFAULT_CONFIG)


def export_checkpoint(src: str, dst: str, dtype: torch.dtype = torch.float16, extra: dict | None = None) -> str:
    """Re-save a checkpoint with tensors stored in ``dtype`` and ``extra`` metadata merged in
    (``rmk sudoku train export``; :func:`rmkernels.models.checkpoint.export_checkpoint`).

    Parameters
    ----------
    src, dst : str
        Source and destination checkpoint paths.
    dtype : torch.dtype
    extra : dict, optional

    Returns
    -------
    str
        The new ``.safetensors`` path.

    Example
    -------
    >>> export_checkpoint("runs/anch1_full/s2b/model.safetensors", "sudoku_full.safetensors")  # doctest: +SKIP
    'sudoku_full.safetensors'
    """
    return shared.export_checkpoint(src, dst, dtype, extra, default_config=SUDOKU_DEFAULT_CONFIG)


__all__ = ["export_checkpoint", "load_checkpoint", "save_checkpoint"]
