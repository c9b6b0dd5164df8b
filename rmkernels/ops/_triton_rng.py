"""Triton side of the counter-based RNG (must produce the bits of rmkernels.reference.rng, docs/spec.md §7)."""
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
    # seed_key: uint32 scalar; counter: int64 scalar (all 64 bits are used) -> the row state
    # (k1, k2) packed in one uint64: k1 in the low word, k2 in the high word
    c = counter.to(tl.int64)
    lo = (c & 0xFFFFFFFF).to(tl.uint32)
    hi = ((c >> 32) & 0xFFFFFFFF).to(tl.uint32)
    k1 = mix32(mix32(lo) ^ seed_key)
    k2 = mix32(mix32(hi ^ tl.full([], 0x85EBCA6B, tl.uint32)) ^ k1)
    return (k2.to(tl.uint64) << 32) | k1.to(tl.uint64)


@triton.jit
def uniform_bits(key, cols):
    # key: uint64 row state from row_key; cols: int32 column ids -> uint32 hashes h
    k1 = key.to(tl.uint32)  # the low word (truncation)
    k2 = (key >> 32).to(tl.uint32)
    return mix32(mix32(k1 + cols.to(tl.uint32) * tl.full([], 0x9E3779B9, tl.uint32)) ^ k2)


@triton.jit
def gumbel(key, cols):
    # key: uint64 row state; cols: int32 column ids -> float32 standard Gumbel noise
    h = uniform_bits(key, cols)
    u = ((h >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08  # 2**-24
    return -tl.log(-tl.log(u))
