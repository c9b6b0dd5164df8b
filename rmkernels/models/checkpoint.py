"""TinyMDM checkpoints (every task): a TinyMDM and optional HistoryNorm in one safetensors file + JSON metadata.

``<path>.safetensors`` holds the model tensors (``model.*``) and, for History Reference variants,
the HER LayerNorm (``history_norm.weight`` / ``.bias``); ``<path>.json`` next to it holds the model
config, the decoding settings of the variant, seeds, commands and wall time. Writes are atomic
(:func:`rmkernels._utils.atomic_write`), so a reader never sees a half-written checkpoint. Every
task's TinyMDM checkpoints use this module (Sudoku through :mod:`rmkernels.tasks.sudoku.checkpoint`,
which adds the default config of its first files; the digit images directly).
"""
from __future__ import annotations

import json
import os

import torch

from rmkernels._utils import atomic_write
from rmkernels.history import HistoryNorm
from rmkernels.models import TinyMDM, TinyMDMConfig


def _stem(path: str) -> str:
    return path[: -len(".safetensors")] if path.endswith(".safetensors") else path


def save_checkpoint(path: str, model: TinyMDM, metadata: dict | None = None,
                    history_norm: HistoryNorm | None = None, dtype: torch.dtype = torch.float32) -> str:
    """Write ``<stem>.safetensors`` (tensors stored in ``dtype``) and ``<stem>.json``, atomically.

    Parameters
    ----------
    path : str
        ``<stem>.safetensors`` or ``<stem>``.
    model : TinyMDM
    metadata : dict, optional
        JSON-serialisable; the model config is added.
    history_norm : HistoryNorm, optional
    dtype : torch.dtype
        Storage dtype of the tensors.

    Returns
    -------
    str
        The ``.safetensors`` path.

    Example
    -------
    >>> save_checkpoint("runs/x/model.safetensors", model, {"variant": "full"}, norm)  # doctest: +SKIP
    'runs/x/model.safetensors'
    """
    from safetensors.torch import save_file

    stem = _stem(path)
    tensors = {f"model.{k}": v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    if history_norm is not None:
        tensors["history_norm.weight"] = history_norm.weight.detach().to("cpu", dtype).contiguous()
        tensors["history_norm.bias"] = history_norm.bias.detach().to("cpu", dtype).contiguous()
    meta = dict(metadata or {})
    meta["model_config"] = model.config.to_dict()
    if history_norm is not None:
        meta["history_norm_eps"] = history_norm.eps
    atomic_write(stem + ".safetensors", lambda tmp: save_file(tensors, tmp))
    atomic_write(stem + ".json", json.dumps(meta, indent=2) + "\n")
    return stem + ".safetensors"


def load_checkpoint(path: str, device="cpu", default_config: TinyMDMConfig | None = None):
    """Load a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : str
        ``<stem>.safetensors`` (or ``<stem>``); ``<stem>.json`` next to it holds the metadata.
    device : str or torch.device
    default_config : TinyMDMConfig, optional
        The model config of files whose metadata holds none (without it they are refused).

    Returns
    -------
    (TinyMDM, HistoryNorm or None, dict)
        The model (float32, eval mode), its HER LayerNorm, the metadata.

    Example
    -------
    >>> from rmkernels.tasks.image.evaluate import checkpoint_path  # doctest: +SKIP
    >>> model, norm, meta = load_checkpoint(checkpoint_path("full"))  # doctest: +SKIP
    >>> meta["variant"], norm is not None  # doctest: +SKIP
    ('full', True)
    """
    from safetensors.torch import load_file

    stem = _stem(path)
    if not os.path.exists(stem + ".safetensors"):
        raise ValueError(f"checkpoint {stem + '.safetensors'!r} does not exist")
    meta = {}
    if os.path.exists(stem + ".json"):
        with open(stem + ".json") as f:
            meta = json.load(f)
    tensors = load_file(stem + ".safetensors", device=str(device))
    model_sd = {k[len("model."):]: v.float() for k, v in tensors.items() if k.startswith("model.")}
    if "model_config" in meta:
        cfg = TinyMDMConfig(**meta["model_config"])
    elif default_config is not None:
        cfg = default_config
    else:
        raise ValueError(f"checkpoint {stem + '.json'!r} holds no model_config")
    model = TinyMDM(cfg).to(device)
    model.load_state_dict(model_sd)
    model.eval()
    norm = None
    if "history_norm.weight" in tensors:
        w = tensors["history_norm.weight"]
        norm = HistoryNorm(w.numel(), eps=float(meta.get("history_norm_eps", 1e-5)), device=device)
        with torch.no_grad():
            norm.weight.copy_(w.float())
            norm.bias.copy_(tensors["history_norm.bias"].float())
        norm.eval()
    return model, norm, meta


def export_checkpoint(src: str, dst: str, dtype: torch.dtype = torch.float16, extra: dict | None = None,
                      default_config: TinyMDMConfig | None = None) -> str:
    """Re-save a checkpoint (e.g. a training run's) with tensors stored in ``dtype`` and ``extra``
    metadata merged in.

    Parameters
    ----------
    src, dst : str
        Source and destination checkpoint paths.
    dtype : torch.dtype
    extra : dict, optional
    default_config : TinyMDMConfig, optional
        As in :func:`load_checkpoint`.

    Returns
    -------
    str
        The new ``.safetensors`` path.

    Example
    -------
    >>> export_checkpoint("runs/image/full/model.safetensors", "image_full.safetensors")  # doctest: +SKIP
    'image_full.safetensors'
    """
    model, norm, meta = load_checkpoint(src, default_config=default_config)
    meta.update(extra or {}, stored_dtype=str(dtype).replace("torch.", ""))
    return save_checkpoint(dst, model, meta, history_norm=norm, dtype=dtype)


__all__ = ["export_checkpoint", "load_checkpoint", "save_checkpoint"]
