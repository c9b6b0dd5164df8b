"""Triton side of the counter-based RNG (must produce the bits of rmkernels.reference.rng)."""
import triton
import triton.language as tl


@triton.jit
def mix32(x):
    # lowbias32 finaliser on uint32 (multiplication wraps mod 2**32)
    x = x ^ (x >> 16)
    x = x * tl.full([], 0x7FEB352D, tl.uint32)
    x = x ^ (x >> 15)
    x = x * tl.full([], 0x846CA68B, tl.uint32)
    x = x ^ (x >> 16)
    return x


@triton.jit
def row_key(seed_key, counter):
    # seed_key: uint32 scalar; counter: int64 scalar (only its low 32 bits are used)
    lo = (counter & 0xFFFFFFFF).to(tl.uint32)
    return mix32(mix32(lo) ^ seed_key)


@triton.jit
def gumbel(key, cols):
    # key: uint32 row key; cols: int32 column ids -> float32 standard Gumbel noise
    h = mix32(key + cols.to(tl.uint32) * tl.full([], 0x9E3779B9, tl.uint32))
    u = ((h >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08  # 2**-24
    return -tl.log(-tl.log(u))
