"""The counter-based RNG shared by the Triton kernels and the eager references.

Noise for element (row, col) is a pure function of ``(seed, counter[row], col)``: nothing is
materialised in the kernels, and the reference reproduces the same bits with int64 arithmetic.

    seed_key   = mix32(seed_lo ^ mix32(seed_hi))                       (host side, once)
    row_key    = mix32(seed_key ^ mix32(counter_lo))                    (per row)
    h          = mix32(row_key + col * 0x9E3779B9)     (mod 2**32)      (per element)
    u          = ((h >> 8) + 0.5) * 2**-24             in (0, 1)
    gumbel     = -log(-log(u))

``mix32`` is the "lowbias32" integer finaliser (a bijection on 32-bit words).
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
MIX_A = 0x7FEB352D
MIX_B = 0x846CA68B
GOLDEN = 0x9E3779B9


def mix32_int(x: int) -> int:
    x &= MASK32
    x ^= x >> 16
    x = (x * MIX_A) & MASK32
    x ^= x >> 15
    x = (x * MIX_B) & MASK32
    x ^= x >> 16
    return x


def mix32(x: torch.Tensor) -> torch.Tensor:
    """mix32 on an int64 tensor holding values in [0, 2**32)."""
    x = x & MASK32
    x = x ^ (x >> 16)
    x = (x * MIX_A) & MASK32
    x = x ^ (x >> 15)
    x = (x * MIX_B) & MASK32
    x = x ^ (x >> 16)
    return x


def seed_key(seed: int) -> int:
    """Fold a (up to 64-bit) integer seed into the 32-bit key the kernels take."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    return mix32_int((seed & MASK32) ^ mix32_int(seed >> 32))


def row_counters(n_rows: int, offset, device) -> torch.Tensor:
    """Per-row counters: ``offset + row`` for an int offset, or the given tensor flattened."""
    if isinstance(offset, torch.Tensor):
        return offset.reshape(-1).to(device=device, dtype=torch.int64)
    return torch.arange(n_rows, device=device, dtype=torch.int64) + int(offset)


def uniform_noise(seed: int, counters: torch.Tensor, n_cols: int, col_start: int = 0) -> torch.Tensor:
    """U(0, 1) float32 noise ``[len(counters), n_cols]`` of columns ``col_start, ..., col_start + n_cols - 1``
    (same bits as the kernels)."""
    key = seed_key(seed)
    row_key = mix32(mix32(counters.to(torch.int64)) ^ key)  # [N]
    cols = torch.arange(col_start, col_start + n_cols, device=counters.device, dtype=torch.int64)
    h = mix32(row_key[:, None] + ((cols * GOLDEN) & MASK32)[None, :])  # [N, V]
    return ((h >> 8).to(torch.float32) + 0.5) * (2.0**-24)


def gumbel_noise(seed: int, counters: torch.Tensor, n_cols: int, col_start: int = 0) -> torch.Tensor:
    """Standard Gumbel float32 noise ``[len(counters), n_cols]`` of columns ``col_start, ...,
    col_start + n_cols - 1`` (same bits as the kernels)."""
    u = uniform_noise(seed, counters, n_cols, col_start)
    return -torch.log(-torch.log(u))
