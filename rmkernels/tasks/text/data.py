"""Sequence layout of the arithmetic task: prompts, generation window, training batches.

A row is ``<expression>=`` (the prompt, fixed while decoding) followed by a generation window of
``GEN_LENGTH`` positions holding the work, ``<eos>``, then ``<pad>`` to the end of the window::

    3 7 * 4 + 1 2 9 - 5 8 = | 3 7 * 4 = 1 4 8 ; ... # 2 1 9 <eos> <pad> ... <pad>
    prompt (12)               generation window (52 positions, all generated)

Every position of the window is generated: the model writes ``<eos>`` and the padding itself
(as LLaDA does with its end-of-text tokens), so a decode has a fixed length and ``K`` revealed
tokens per model call cover the window in ``ceil(52 / K)`` calls. Rows of a batch are laid out as
:func:`rmkernels.generate` lays out prompts: left-aligned, the window right after each prompt,
``<pad>`` after that, outside the attention mask.
"""
from __future__ import annotations

import numpy as np
import torch

from rmkernels.tasks.text.problems import MAX_EXPRESSION_CHARS, MAX_WORK_CHARS, work
from rmkernels.tasks.text.tokenizer import CHARS, EOS_ID, PAD_ID

GEN_LENGTH = 52  # >= MAX_WORK_CHARS + 1 (<eos>); a multiple of 4
MAX_PROMPT = MAX_EXPRESSION_CHARS + 1  # "<expression>="
MAX_SEQ = MAX_PROMPT + GEN_LENGTH  # 68
assert GEN_LENGTH >= MAX_WORK_CHARS + 1

_CHAR_ID = np.full(128, -1, dtype=np.int64)
_CHAR_ID[[ord(c) for c in CHARS]] = np.arange(len(CHARS))


def _ids(text: str) -> np.ndarray:
    """Character ids of ``text`` (the tokenizer's fixed ids; the vectorised path of training)."""
    a = _CHAR_ID[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
    if (a < 0).any():
        raise ValueError(f"text {text!r} holds characters outside the vocabulary")
    return a


def prompt_ids(expressions) -> list[np.ndarray]:
    """``<expression>=`` ids of each expression."""
    return [_ids(e + "=") for e in expressions]


def target_ids(expressions) -> np.ndarray:
    """The generation window's gold ids ``[N, GEN_LENGTH]``: work, ``<eos>``, ``<pad>``..."""
    out = np.full((len(expressions), GEN_LENGTH), PAD_ID, dtype=np.int64)
    for i, e in enumerate(expressions):
        w = _ids(work(e))
        out[i, : len(w)] = w
        out[i, len(w)] = EOS_ID
    return out


def layout(prompts, windows: np.ndarray):
    """Rows ``[prompt, window, <pad>...]`` of a batch: ``(ids [N, L], gen_mask [N, L], attention_mask [N, L])``
    as torch tensors, ``L`` = the longest prompt + ``GEN_LENGTH``."""
    n = len(prompts)
    lens = np.array([len(p) for p in prompts])
    L = int(lens.max()) + windows.shape[1]
    ids = np.full((n, L), PAD_ID, dtype=np.int64)
    gen = np.zeros((n, L), dtype=bool)
    att = np.zeros((n, L), dtype=bool)
    for i, p in enumerate(prompts):
        k = len(p)
        ids[i, :k] = p
        ids[i, k : k + windows.shape[1]] = windows[i]
        gen[i, k : k + windows.shape[1]] = True
        att[i, : k + windows.shape[1]] = True
    return torch.from_numpy(ids), torch.from_numpy(gen), torch.from_numpy(att)


def full_rows(expressions):
    """Gold rows of ``expressions``: ``(ids, gen_mask, attention_mask)`` (see :func:`layout`)."""
    return layout(prompt_ids(expressions), target_ids(expressions))


__all__ = ["GEN_LENGTH", "MAX_PROMPT", "MAX_SEQ", "full_rows", "layout", "prompt_ids", "target_ids"]
