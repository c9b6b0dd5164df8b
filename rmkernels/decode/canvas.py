"""The decoding canvas: token layout, editable positions and the block schedule of every row."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rmkernels._utils import FLOAT_DTYPES, INT_DTYPES, check_same_device, check_tensor
from rmkernels.decode.config import DecodeConfig


@dataclass
class Canvas:
    """A batch laid out for decoding.

    tokens : ``[B, L]`` int64, the starting canvas.
    gen_mask : ``[B, L]`` bool, the generated (editable) positions; HER's ``g``.
    attention_mask : ``[B, L]`` bool or ``None`` (no padding anywhere).
    gen_rank : ``[B, L]`` int64, a position's index among its row's generated positions (-1 elsewhere).
    n_blocks : ``[B]`` int64, blocks per row.
    block_len : int, generated positions per block (a row's whole generation when there are no blocks).
    steps_per_block : ``[B]`` int64.
    """

    tokens: torch.Tensor
    gen_mask: torch.Tensor
    attention_mask: torch.Tensor | None
    gen_rank: torch.Tensor
    n_blocks: torch.Tensor
    block_len: int
    steps_per_block: torch.Tensor


def _prompts_to_canvas(input_ids, attention_mask, gen_length: int, mask_id: int, pad_id: int):
    """Prompts ``[B, P]`` (any padding, marked by ``attention_mask``) -> ``[prompt, M * gen_length, pad]`` rows.

    Prompts are left-aligned and padding goes to the right, so every real token keeps the position
    it has when its row is decoded alone (batch results do not depend on batch composition).
    """
    B, P = input_ids.shape
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    n = real.sum(1)  # [B]
    L = int(n.max()) + gen_length if B else gen_length
    pos = torch.arange(L, device=input_ids.device)[None, :]  # [1, L]
    tokens = torch.full((B, L), pad_id, dtype=torch.int64, device=input_ids.device)
    # scatter the real prompt tokens, in order, to the row's first n_b positions
    dest = torch.cumsum(real.long(), 1) - 1  # [B, P]
    rows = torch.arange(B, device=input_ids.device)[:, None].expand(B, P)
    tokens[rows[real], dest[real]] = input_ids[real].long()
    gen = (pos >= n[:, None]) & (pos < n[:, None] + gen_length)
    tokens[gen] = mask_id
    attended = pos < n[:, None] + gen_length
    return tokens, gen, attended


def build_canvas(
    input_ids: torch.Tensor,
    mask_id: int,
    config: DecodeConfig,
    *,
    attention_mask: torch.Tensor | None = None,
    gen_length: int | None = None,
    prompt_mask: torch.Tensor | None = None,
    pad_id: int | None = None,
    max_length: int | None = None,
) -> Canvas:
    """Validate the inputs of :func:`rmkernels.generate` and lay out the canvas (host syncs allowed here)."""
    if isinstance(mask_id, bool) or not isinstance(mask_id, int):
        raise ValueError(f"mask_id must be an int (the model's mask token id), got {mask_id!r}")
    if mask_id < 0:
        raise ValueError(f"mask_id={mask_id} is outside the vocabulary")
    check_tensor("input_ids", input_ids, dtypes=INT_DTYPES, ndim=2)
    if attention_mask is not None:
        check_tensor("attention_mask", attention_mask, dtypes=(torch.bool,) + INT_DTYPES + FLOAT_DTYPES, ndim=2)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape {tuple(input_ids.shape)}")
    if prompt_mask is not None:
        check_tensor("prompt_mask", prompt_mask, dtypes=(torch.bool,), ndim=2)
        if prompt_mask.shape != input_ids.shape:
            raise ValueError(f"prompt_mask shape {tuple(prompt_mask.shape)} must equal input_ids shape {tuple(input_ids.shape)}")
    check_same_device(input_ids=input_ids, attention_mask=attention_mask, prompt_mask=prompt_mask)
    if bool((input_ids < 0).any()):
        raise ValueError("input_ids holds negative token ids")
    pad_id = mask_id if pad_id is None else int(pad_id)

    if gen_length is not None:
        if prompt_mask is not None:
            raise ValueError("pass either gen_length (prompts extended by masks) or prompt_mask (a ready canvas), not both")
        if isinstance(gen_length, bool) or not isinstance(gen_length, int) or gen_length < 1:
            raise ValueError(f"gen_length must be an int >= 1, got {gen_length!r}")
        tokens, gen, attended = _prompts_to_canvas(input_ids, attention_mask, gen_length, mask_id, pad_id)
        if max_length is not None and tokens.shape[1] > max_length:
            longest = tokens.shape[1] - gen_length
            raise ValueError(f"prompt of {longest} tokens + gen_length={gen_length} is longer than the canvas "
                             f"(max_length={max_length})")
    else:
        tokens = input_ids.long().clone()
        attended = torch.ones_like(tokens, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        fixed = torch.zeros_like(attended) if prompt_mask is None else prompt_mask
        gen = attended & ~fixed
        if max_length is not None and tokens.shape[1] > max_length:
            raise ValueError(f"the canvas of length {tokens.shape[1]} is longer than max_length={max_length}")
        if prompt_mask is not None and bool((prompt_mask.all(1) & attended.any(1)).any()) and not bool(gen.any()):
            raise ValueError("prompt_mask marks every position as fixed: the prompt fills the whole canvas")

    n_gen = gen.sum(1)  # [B]
    if config.block_size is None:
        block_len = max(int(n_gen.max()) if n_gen.numel() else 0, 1)
        n_blocks = (n_gen > 0).long()
    else:
        block_len = config.block_size
        if bool((n_gen % block_len != 0).any()):
            raise ValueError(f"block_size={block_len} must divide every row's generation length "
                             f"(got lengths {sorted(set(n_gen.tolist()))})")
        n_blocks = n_gen // block_len
    if bool(((n_blocks > 0) & (config.steps % n_blocks.clamp(min=1) != 0)).any()):
        raise ValueError(f"steps={config.steps} must be a multiple of the number of blocks "
                         f"({sorted(set(n_blocks.tolist()))}) so the budget splits evenly")
    steps_per_block = torch.where(n_blocks > 0, config.steps // n_blocks.clamp(min=1), 0)
    gen_rank = torch.where(gen, torch.cumsum(gen.long(), 1) - 1, -1)
    attn = None if bool(attended.all()) else attended
    return Canvas(tokens, gen, attn, gen_rank, n_blocks, block_len, steps_per_block)
