"""Row addressing shared by the vocabulary-streaming kernels (rm_stats, rm_loss).

A ``[..., V]`` tensor whose last dimension is contiguous is addressed as ``N`` rows through at most
two leading strides: row ``r`` starts at ``(r // L1) * stride0 + (r % L1) * stride1`` elements from
the first. That covers contiguous tensors, slices such as ``logits[:, prompt_len:, :]`` and
broadcast (stride-0) rows without a copy.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def row_base(z_ptr, row, L1, stride0, stride1):
    # rows are addressed through (at most) two leading strides: row = i0 * L1 + i1
    return z_ptr + (row // L1).to(tl.int64) * stride0 + (row % L1).to(tl.int64) * stride1


def row_layout(logits: torch.Tensor):
    """Express the rows of ``logits`` [..., V] (last dim contiguous) through <= 2 leading strides.

    Returns ``(tensor, N, L1, stride0, stride1)`` with row ``r`` at ``(r // L1) * stride0 +
    (r % L1) * stride1``; copies only when the leading dims cannot be expressed that way.
    """
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    # drop size-1 leading dims, then merge neighbours whose strides chain
    dims = [(n, st) for n, st in zip(logits.shape[:-1], logits.stride()[:-1]) if n != 1]
    merged = []
    for n, st in dims:
        if merged and merged[-1][1] == n * st:
            merged[-1] = (merged[-1][0] * n, st)
        else:
            merged.append((n, st))
    if len(merged) > 2:
        logits = logits.contiguous()
        V = logits.shape[-1]
        merged = [(logits.numel() // max(V, 1), V)]
    N = 1
    for n, _ in merged:
        N *= n
    if not merged:
        return logits, N, 1, 0, 0
    if len(merged) == 1:
        return logits, N, N, 0, merged[0][1]
    (n0, st0), (n1, st1) = merged
    return logits, N, n1, st0, st1


def pick_block(V: int) -> int:
    """Columns per tile: 2048 with 8 warps is 8 elements (one 16-byte bf16 load) per thread; the
    rm_stats kernel then needs ~57 registers (tools/triton_aot.py), so 4 blocks fit on an SM,
    against ~126 registers and 1-2 blocks at 4096 columns."""
    return max(16, min(triton.next_power_of_2(V), 2048))
