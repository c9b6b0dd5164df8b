"""Models: the tiny MDM of our own, and native LLaDA / Dream (released checkpoints, no download).

- :class:`TinyMDM` — a small bidirectional transformer (Sudoku, tests, benchmarks).
- :class:`LLaDAModel` / :class:`LLaDAConfig`, :class:`DreamModel` / :class:`DreamConfig` — written
  from the architecture facts, loading released safetensors checkpoints strictly
  (``from_pretrained``), with attention backends ``attn_impl in {"auto", "flash", "sdpa", "eager"}``
  and a :class:`KVCache` for span forwards (see :mod:`rmkernels.models._base` and ``docs/models.md``).
- :func:`load_pretrained` — picks LLaDA or Dream from ``config.json``.
"""
from __future__ import annotations

import json
import os

from rmkernels.models._base import KVCache, MDMOutput, NativeMDM
from rmkernels.models._layers import ATTN_IMPLS, RMSNorm, apply_rope, attention, rope_cos_sin
from rmkernels.models.dream import DreamConfig, DreamModel
from rmkernels.models.llada import LLaDAConfig, LLaDAModel
from rmkernels.models.tiny_mdm import TinyMDM, TinyMDMConfig

__all__ = [
    "ATTN_IMPLS",
    "DreamConfig",
    "DreamModel",
    "KVCache",
    "LLaDAConfig",
    "LLaDAModel",
    "MDMOutput",
    "NativeMDM",
    "RMSNorm",
    "TinyMDM",
    "TinyMDMConfig",
    "apply_rope",
    "attention",
    "load_pretrained",
    "model_class_for",
    "rope_cos_sin",
]


def model_class_for(config: dict) -> type[NativeMDM]:
    """The native class for a ``config.json`` dict: LLaDA (``model_type`` "llada" or ``d_model``) or
    Dream (``model_type`` "Dream" / "qwen2" or ``hidden_size``)."""
    mt = str(config.get("model_type", "")).lower()
    archs = " ".join(str(a) for a in config.get("architectures") or []).lower()
    if mt == "llada" or "llada" in archs:
        return LLaDAModel
    if mt in ("dream", "qwen2") or "dream" in archs:
        return DreamModel
    if "d_model" in config and "n_layers" in config:
        return LLaDAModel
    if "hidden_size" in config and "num_hidden_layers" in config:
        return DreamModel
    raise ValueError(f"cannot tell the model family from config (model_type={config.get('model_type')!r}, "
                     f"architectures={config.get('architectures')!r})")


def load_pretrained(local_dir: str, dtype=None, device=None, attn_impl: str = "auto") -> NativeMDM:
    """``LLaDAModel`` or ``DreamModel`` ``.from_pretrained(local_dir, ...)``, chosen from its ``config.json``.

    Parameters
    ----------
    local_dir : str
        A local checkpoint directory (nothing is downloaded).
    dtype, device, attn_impl
        As in :meth:`NativeMDM.from_pretrained`.

    Returns
    -------
    NativeMDM

    Example
    -------
    >>> model = load_pretrained("/models/Dream-v0-Instruct-7B", dtype=torch.bfloat16, device="cuda")  # doctest: +SKIP
    """
    path = os.path.join(local_dir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{local_dir} holds no config.json (nothing is downloaded)")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return model_class_for(cfg).from_pretrained(local_dir, dtype=dtype, device=device, attn_impl=attn_impl)
