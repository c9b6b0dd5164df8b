"""Sequence layout of the arithmetic task: prompts, generation window, training batches.

Every row has the same 68 positions: the prompt ``<expression>=`` right-padded with ``<pad>`` to
``PROMPT_WIDTH = 16`` tokens (fixed while decoding, attended), then a generation window of
``GEN_LENGTH = 52`` positions holding the work, ``<eos>``, then ``<pad>`` to the end::

    3 7 * 4 + 1 2 9 - 5 8 = <pad> <pad> <pad> <pad> | 3 7 * 4 = 1 4 8 ; ... # 2 1 9 <eos> <pad> ... <pad>
    prompt, padded to 16 positions                    generation window (52 positions, all generated)

The fixed prompt width puts the work's first operand at a constant distance (16) from its copy in
the prompt, which a model with relative (rotary) positions learns quickly, and makes every row
the same length (no attention mask). Every position of the window is generated: the model writes
``<eos>`` and the padding itself (as LLaDA does with its end-of-text tokens), so a decode has a
fixed length and ``K`` revealed tokens per model call cover the window in ``ceil(52 / K)`` calls.
"""
from __future__ import annotations

import numpy as np
import torch

from rmkernels.tasks.text.problems import MAX_EXPRESSION_CHARS, MAX_WORK_CHARS, work
from rmkernels.tasks.text.tokenizer import CHARS, EOS_ID, PAD_ID

GEN_LENGTH = 52  # >= MAX_WORK_CHARS + 1 (<eos>); a multiple of 4
PROMPT_WIDTH = MAX_EXPRESSION_CHARS + 1  # "<expression>=" padded to 16 tokens
MAX_SEQ = PROMPT_WIDTH + GEN_LENGTH  # 68
assert GEN_LENGTH >= MAX_WORK_CHARS + 1

_CHAR_ID = np.full(128, -1, dtype=np.int64)
_CHAR_ID[[ord(c) for c in CHARS]] = np.arange(len(CHARS))


def _ids(text: str) -> np.ndarray:
    """Character ids of ``text`` (the tokenizer's fixed ids; the vectorised path of training)."""
    a = _CHAR_ID[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
    if (a < 0).any():
        raise ValueError(f"text {text!r} holds characters outside the vocabulary")
    return a


def prompt_ids(expressions) -> np.ndarray:
    """``<expression>=`` ids of each expression, right-padded with ``<pad>``: ``[N, PROMPT_WIDTH]``."""
    out = np.full((len(expressions), PROMPT_WIDTH), PAD_ID, dtype=np.int64)
    for i, e in enumerate(expressions):
        p = _ids(e + "=")
        if len(p) > PROMPT_WIDTH:
            raise ValueError(f"expression {e!r} is longer than {PROMPT_WIDTH - 1} characters")
        out[i, : len(p)] = p
    return out


def target_ids(expressions) -> np.ndarray:
    """The generation window's gold ids ``[N, GEN_LENGTH]``: work, ``<eos>``, ``<pad>``..."""
    out = np.full((len(expressions), GEN_LENGTH), PAD_ID, dtype=np.int64)
    for i, e in enumerate(expressions):
        w = _ids(work(e))
        out[i, : len(w)] = w
        out[i, len(w)] = EOS_ID
    return out


def full_rows(expressions):
    """Gold rows of ``expressions``: ``(ids [N, MAX_SEQ], gen_mask [N, MAX_SEQ])`` as torch tensors
    (``gen_mask`` marks the generation window)."""
    ids = np.concatenate([prompt_ids(expressions), target_ids(expressions)], 1)
    gen = np.zeros(ids.shape, dtype=bool)
    gen[:, PROMPT_WIDTH:] = True
    return torch.from_numpy(ids), torch.from_numpy(gen)


__all__ = ["GEN_LENGTH", "MAX_SEQ", "PROMPT_WIDTH", "full_rows", "prompt_ids", "target_ids"]
