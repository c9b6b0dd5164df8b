"""Text-task checkpoints: a directory in the released LLaDA format plus the task's extras.

``<dir>/config.json`` + ``model.safetensors``
    the model, written by ``LLaDAModel.save_pretrained`` (loadable with ``LLaDAModel.from_pretrained``
    alone, as any LLaDA checkpoint);
``<dir>/tokenizer.json`` + ``tokenizer_config.json``
    the character tokenizer (``PreTrainedTokenizerFast.from_pretrained(dir)``);
``<dir>/history_norm.safetensors``
    the HER LayerNorm (History Reference variants only);
``<dir>/rmk.json``
    the variant, its decoding settings, training config, commands and wall time.

A checkpoint is written into a temporary directory next to ``<dir>`` and renamed onto it
(:func:`rmkernels._utils.atomic_write_dir`), so a reader never sees a half-written one.
"""
from __future__ import annotations

import json
import os
import torch

from rmkernels._utils import atomic_write_dir
from rmkernels.history import HistoryNorm
from rmkernels.tasks.text.data import MAX_SEQ
from rmkernels.tasks.text.tokenizer import ASSETS, MASK_ID, VOCAB_SIZE, save_tokenizer

META_FILE = "rmk.json"
NORM_FILE = "history_norm.safetensors"
MODEL_DEFAULTS = dict(d_model=128, n_heads=4, n_kv_heads=4, n_layers=4, mlp_hidden_size=384, vocab_size=VOCAB_SIZE,
                      embedding_size=VOCAB_SIZE, rope_theta=10000.0, rms_norm_eps=1e-5, mask_token_id=MASK_ID,
                      weight_tying=False, include_bias=False, max_sequence_length=128)
assert MODEL_DEFAULTS["max_sequence_length"] >= MAX_SEQ


def new_model(**overrides):
    """A freshly initialised LLaDA-architecture model for the task (``MODEL_DEFAULTS`` + ``overrides``).

    Example
    -------
    >>> m = new_model(d_model=32, n_layers=1, mlp_hidden_size=64)
    >>> m(input_ids=torch.zeros(1, 5, dtype=torch.long)).logits.shape
    torch.Size([1, 5, 19])
    """
    from rmkernels.models.llada import LLaDAConfig, LLaDAModel

    cfg = {**MODEL_DEFAULTS, **overrides}
    if "n_heads" in overrides and "n_kv_heads" not in overrides:
        cfg["n_kv_heads"] = cfg["n_heads"]
    return LLaDAModel(LLaDAConfig(**cfg))


def save_checkpoint(directory: str, model, metadata: dict | None = None, history_norm: HistoryNorm | None = None,
                    dtype: torch.dtype | None = None) -> str:
    """Write a checkpoint directory (atomically; see the module docstring); returns ``directory``.

    ``dtype`` (e.g. ``torch.float16`` for shipping) converts a copy of the tensors; default: as they are.
    """
    import copy

    from safetensors.torch import save_file

    def write(tmp):
        m = model if dtype is None else copy.deepcopy(model).to(dtype)
        m.save_pretrained(tmp)
        meta = dict(metadata or {})
        meta["stored_dtype"] = str(next(m.parameters()).dtype).replace("torch.", "")
        if history_norm is not None:
            t = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in history_norm.state_dict().items()}
            save_file(t, os.path.join(tmp, NORM_FILE))
            meta["history_norm_eps"] = history_norm.eps
        with open(os.path.join(tmp, META_FILE), "w") as f:
            f.write(json.dumps(meta, indent=2) + "\n")
        save_tokenizer(tmp)

    return atomic_write_dir(directory, write)


def load_checkpoint(directory: str, device="cpu"):
    """``(model float32 in eval mode, history_norm or None, metadata)`` of a checkpoint directory."""
    from rmkernels.models.llada import LLaDAModel

    directory = str(directory)
    if not os.path.isfile(os.path.join(directory, "config.json")):
        raise ValueError(f"checkpoint {directory!r} does not exist (no config.json)")
    model = LLaDAModel.from_pretrained(directory, dtype=torch.float32, device=device)
    meta = {}
    if os.path.exists(os.path.join(directory, META_FILE)):
        with open(os.path.join(directory, META_FILE)) as f:
            meta = json.load(f)
    norm = None
    if os.path.exists(os.path.join(directory, NORM_FILE)):
        from safetensors.torch import load_file

        t = load_file(os.path.join(directory, NORM_FILE), device=str(device))
        norm = HistoryNorm(t["weight"].numel(), eps=float(meta.get("history_norm_eps", 1e-5)), device=device)
        norm.load_state_dict({k: v.float() for k, v in t.items()})
        norm.eval()
    return model, norm, meta


def shipped(name: str) -> str:
    """The directory of a shipped checkpoint (``base``, ``rm``, ``rm_hist``, ``rm_hist_decay``, ``full``)."""
    return str(ASSETS / name)


__all__ = ["MODEL_DEFAULTS", "load_checkpoint", "new_model", "save_checkpoint", "shipped"]
