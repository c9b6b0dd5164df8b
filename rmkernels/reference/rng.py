"""The counter-based RNG shared by the Triton kernels, the C++ kernel and the eager references (docs/spec.md §7).

Noise for element (row, col) is a pure function of ``(seed, counter[row], col)``: nothing is
materialised in the kernels, and the reference reproduces the same bits with int64 arithmetic.
All arithmetic is on 32-bit words (mod 2**32); the 64-bit counter is split into ``lo, hi``.

    seed_key  = mix32(seed_lo ^ mix32(seed_hi))                        (host side, once)
    k1        = mix32(mix32(counter_lo) ^ seed_key)                    (per row)
    k2        = mix32(mix32(counter_hi ^ HI_SALT) ^ k1)                 (per row)
    h         = mix32(mix32(k1 + col * 0x9E3779B9) ^ k2)                (per element)
    u         = ((h >> 8) + 0.5) * 2**-24             in (0, 1)
    gumbel    = -log(-log(u))

``mix32`` is the "lowbias32" integer finaliser (a bijection on 32-bit words). For a fixed seed the
row state ``(k1, k2)`` is a bijection of the whole 64-bit counter (``k1`` of ``lo``; then, for a
given ``k1``, ``k2`` of ``hi``), so no two counters share a row of noise: the stream has no period
shorter than 2**64 counters. The decoder's counter is ``step * 2**24 + position``.
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
MIX_A = 0x7FEB352D
MIX_B = 0x846CA68B
GOLDEN = 0x9E3779B9
HI_SALT = 0x85EBCA6B  # separates the high counter word's path from the low word's


def mix32_int(x: int) -> int:
    """mix32 on a Python int (its low 32 bits)."""
    x &= MASK32
    x ^= x >> 16
    x = (x * MIX_A) & MASK32
    x ^= x >> 15
    x = (x * MIX_B) & MASK32
    x ^= x >> 16
    return x


def mix32(x: torch.Tensor) -> torch.Tensor:
    """mix32 on an int64 tensor (its low 32 bits); values in [0, 2**32)."""
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


def row_state(seed: int, counters: torch.Tensor):
    """The per-row words ``(k1, k2)``, int64 tensors in ``[0, 2**32)`` shaped like ``counters``.

    Every bit of the 64-bit counter reaches the state (negative counters: two's complement).
    """
    c = counters.to(torch.int64)
    lo, hi = c & MASK32, (c >> 32) & MASK32  # arithmetic shift, then masked: the high word's bits
    k1 = mix32(mix32(lo) ^ seed_key(seed))
    k2 = mix32(mix32(hi ^ HI_SALT) ^ k1)
    return k1, k2


def uniform_bits(seed: int, counters: torch.Tensor, n_cols: int, col_start: int = 0) -> torch.Tensor:
    """The 32-bit hashes ``h`` as int64 ``[len(counters), n_cols]`` of columns ``col_start, ...,
    col_start + n_cols - 1`` (same bits as the kernels)."""
    k1, k2 = row_state(seed, counters.reshape(-1))
    cols = torch.arange(col_start, col_start + n_cols, device=counters.device, dtype=torch.int64)
    return mix32(mix32(k1[:, None] + ((cols * GOLDEN) & MASK32)[None, :]) ^ k2[:, None])


def uniform_noise(seed: int, counters: torch.Tensor, n_cols: int, col_start: int = 0) -> torch.Tensor:
    """U(0, 1) float32 noise ``[len(counters), n_cols]`` of columns ``col_start, ..., col_start + n_cols - 1``
    (same bits as the kernels)."""
    h = uniform_bits(seed, counters, n_cols, col_start)
    return ((h >> 8).to(torch.float32) + 0.5) * (2.0**-24)


def gumbel_noise(seed: int, counters: torch.Tensor, n_cols: int, col_start: int = 0) -> torch.Tensor:
    """Standard Gumbel float32 noise ``[len(counters), n_cols]`` of columns ``col_start, ...,
    col_start + n_cols - 1`` (same bits as the kernels)."""
    u = uniform_noise(seed, counters, n_cols, col_start)
    return -torch.log(-torch.log(u))
