"""The counter-based RNG (docs/spec.md §7): one stream in the reference, the Triton kernels and the C++
kernel, every bit of the 64-bit counter used, no repeats in the decoder's counter layout."""
import math

import pytest
import torch
import triton
import triton.language as tl
from scipy import stats

from rmkernels import rm_linear_stats, rm_stats
from rmkernels.decode.reference import COUNTER_STRIDE
from rmkernels.ops._triton_rng import gumbel, row_key, uniform_bits
from rmkernels.reference import rng

pytestmark = pytest.mark.usefixtures("one_thread")

# implementations of rm_stats that sample with the counter RNG ("ext": the C++ CPU kernel)
SAMPLERS = ["reference", "triton", "ext"]

# counters / seeds where the high words matter: beyond 2**32, negative, the int64 extremes
BIG_COUNTERS = [0, 1, 2**32 - 1, 2**32, 2**32 + 1, 3 * 2**32 + 17, 255 * 2**24 + 5, 256 * 2**24 + 5,
                2**40 + 12345, 2**62 + 2**33 + 7, 2**63 - 1, -1, -(2**32), -(2**63)]
BIG_SEEDS = [0, 7, 2**32 - 1, 2**32 + 7, 2**40 + 3, 2**63 + 11, 2**64 - 1, -5]


# ----------------------------------------------------------------------------------------------
# an independent transcription of the formula (plain Python ints, from docs/spec.md §7)
# ----------------------------------------------------------------------------------------------
def _mix32(x: int) -> int:
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def _hash_by_hand(seed: int, counter: int, col: int) -> int:
    seed &= 2**64 - 1
    counter &= 2**64 - 1  # two's complement of a negative int64
    key = _mix32((seed & 0xFFFFFFFF) ^ _mix32(seed >> 32))
    k1 = _mix32(_mix32(counter & 0xFFFFFFFF) ^ key)
    k2 = _mix32(_mix32((counter >> 32) ^ 0x85EBCA6B) ^ k1)
    return _mix32(_mix32((k1 + col * 0x9E3779B9) & 0xFFFFFFFF) ^ k2)


def test_reference_bits_follow_the_formula():
    cols = [0, 1, 2, 77, 1000]
    ctr = torch.tensor(BIG_COUNTERS, dtype=torch.int64)
    for seed in BIG_SEEDS:
        got = rng.uniform_bits(seed, ctr, max(cols) + 1)[:, cols]
        want = torch.tensor([[_hash_by_hand(seed, c, j) for j in cols] for c in BIG_COUNTERS])
        assert torch.equal(got, want), seed
    u = rng.uniform_noise(3, ctr, 8)
    h = rng.uniform_bits(3, ctr, 8)
    assert torch.equal(u, ((h >> 8).float() + 0.5) * 2.0**-24) and bool(((u > 0) & (u < 1)).all())
    torch.testing.assert_close(rng.gumbel_noise(3, ctr, 8), -torch.log(-torch.log(u)), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# the Triton helpers produce the reference's bits
# ----------------------------------------------------------------------------------------------
@triton.jit
def _noise_kernel(ctr_ptr, bits_ptr, g_ptr, seed_key, V, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    key = row_key(seed_key.to(tl.uint32), tl.load(ctr_ptr + row))
    cols = tl.arange(0, BLOCK)
    ok = cols < V
    tl.store(bits_ptr + row * V + cols, uniform_bits(key, cols).to(tl.int64), mask=ok)
    tl.store(g_ptr + row * V + cols, gumbel(key, cols), mask=ok)


@pytest.mark.parametrize("seed", BIG_SEEDS)
def test_triton_noise_is_the_reference_noise_bit_for_bit(seed, device):
    V = 37
    ctr = torch.tensor(BIG_COUNTERS, dtype=torch.int64, device=device)
    bits = torch.full((len(BIG_COUNTERS), V), -1, dtype=torch.int64, device=device)
    g = torch.full((len(BIG_COUNTERS), V), float("nan"), device=device)
    _noise_kernel[(len(BIG_COUNTERS),)](ctr, bits, g, rng.seed_key(seed), V, BLOCK=64)
    assert torch.equal(bits.cpu(), rng.uniform_bits(seed, ctr.cpu(), V))
    # float32 log in numpy / CUDA vs torch: the same u, the Gumbel value within a few ulp
    torch.testing.assert_close(g.cpu(), rng.gumbel_noise(seed, ctr.cpu(), V), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op,impl", [("rm_stats", i) for i in SAMPLERS]
                         + [("rm_linear_stats", i) for i in ("triton", "ext", "reference")])
def test_kernels_sample_the_reference_noise_at_large_counters_and_seeds(op, impl):
    """With equal logits the Gumbel-max candidate is the argmax of the noise itself: every
    implementation picks the column of the largest reference uniform (all 64 counter bits and the
    full seed reach it; float32 log of distinct u never ties near the top). The fused LM head gets
    zero hidden states, so its logits are all 0 too."""
    V, N = 100, len(BIG_COUNTERS)
    counters = torch.tensor(BIG_COUNTERS, dtype=torch.int64)
    tokens = torch.zeros(N, dtype=torch.long)
    for seed in (2**63 + 11, -5):
        want = rng.uniform_bits(seed, counters, V).argmax(1)  # h >> 8 is monotone with u; max unique here
        kw = dict(temperature=1.0, seed=seed, offset=counters, impl=impl)
        if op == "rm_stats":
            got = rm_stats(torch.zeros(N, V), tokens, V - 1, **kw)
        else:
            got = rm_linear_stats(torch.zeros(N, 8), torch.randn(V, 8), tokens, V - 1, **kw)
        assert torch.equal(got.top_id, want), (op, impl, seed)


# ----------------------------------------------------------------------------------------------
# counters that differ only above bit 32 give independent noise
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shift", ["2**32", "2**56", "random high word"])
def test_counters_differing_above_bit_32_are_independent(shift):
    N, V = 4096, 32
    lo = torch.randint(0, 2**32, (N,), dtype=torch.int64)
    high = {"2**32": torch.full((N,), 1), "2**56": torch.full((N,), 2**24),
            "random high word": torch.randint(1, 2**31, (N,))}[shift]
    a = rng.uniform_bits(11, lo, V)  # [N, V]
    b = rng.uniform_bits(11, lo + (high << 32), V)
    n = a.numel()
    # 1. no element repeats (P(h == h') = 2**-32: expected 3e-5 equal pairs in 131072)
    assert int((a == b).sum()) == 0
    # 2. every bit of h xor h' is a fair coin (6 sigma: |freq - 1/2| < 6 * 0.5 / sqrt(n) = 0.0083)
    diff = a ^ b
    freq = torch.stack([((diff >> k) & 1).double().mean() for k in range(32)])
    assert float((freq - 0.5).abs().max()) < 6 * 0.5 / math.sqrt(n), freq.tolist()
    # 3. uniforms uncorrelated (6 sigma of Pearson's r under independence: 6 / sqrt(n) = 0.017)
    ua, ub = ((a >> 8).double() + 0.5) / 2**24, ((b >> 8).double() + 0.5) / 2**24
    r = float(torch.corrcoef(torch.stack([ua.flatten(), ub.flatten()]))[0, 1])
    assert abs(r) < 6 / math.sqrt(n), r
    # 4. chi-square test of independence on a 16 x 16 joint histogram (fails at p < 1e-6)
    cells = (ua.flatten() * 16).long() * 16 + (ub.flatten() * 16).long()
    counts = torch.bincount(cells, minlength=256).double()
    chi2 = float(((counts - n / 256) ** 2 / (n / 256)).sum())
    assert chi2 < stats.chi2.isf(1e-6, 255), chi2


@pytest.mark.parametrize("impl", SAMPLERS)
def test_sampled_ids_at_counters_2_to_the_32_apart_agree_only_by_chance(impl):
    """Uniform logits over V = 2: two independent draws agree with probability 1/2; a counter
    that ignores its high word would draw the same id every time."""
    N, V = 64, 2
    logits = torch.zeros(N, V)
    tokens = torch.zeros(N, dtype=torch.long)
    base = torch.randint(0, 2**32, (N,)) + 200 * COUNTER_STRIDE
    a, b = (rm_stats(logits, tokens, V - 1, temperature=1.0, seed=5, offset=ctr, impl=impl).top_id
            for ctr in (base, base + 2**32))
    agree = int((a == b).sum())
    mean, sd = N / V, math.sqrt(N * (1 / V) * (1 - 1 / V))  # binomial(64, 1/2): 32 +- 4; always: 64
    assert abs(agree - mean) < 6 * sd, agree
    # and the ids themselves are uniform over the vocabulary (chi-square, 1 dof, fails at p < 1e-6)
    counts = torch.bincount(a, minlength=V).double()
    assert float(((counts - N / V) ** 2 / (N / V)).sum()) < stats.chi2.isf(1e-6, V - 1)


# ----------------------------------------------------------------------------------------------
# the decoder's counters (step * 2**24 + position) never repeat their noise
# ----------------------------------------------------------------------------------------------
def test_decoder_noise_does_not_repeat_over_2_to_the_20_steps():
    """A position's noise row over 2**20 decoding steps holds no repeat.

    The fingerprint of a step is the 24-bit uniforms of 4 columns (96 bits). For independent
    noise the expected number of colliding pairs among 2**20 steps is C(2**20, 2) / 2**96 ~ 2**-57,
    so any repeat is a defect: the old hash of the counter's low 32 bits repeated every 256 steps
    (2**20 - 256 repeats), and a 32-bit row key would give ~C(2**20, 2) / 2**32 ~ 128 steps whose
    whole noise rows coincide (birthday bound) -- hence the 64-bit row state of docs/spec.md §7.
    """
    position = 2**24 - 3  # a position with high bits set in the counter's low word
    counters = torch.arange(2**20, dtype=torch.int64) * COUNTER_STRIDE + position
    u24 = rng.uniform_bits(2024, counters, 4) >> 8  # [2**20, 4] the bits u is made of
    packed = torch.stack([(u24[:, 0] << 24) | u24[:, 1], (u24[:, 2] << 24) | u24[:, 3]], 1)  # 2 x 48 bits
    # lexicographic sort (by the second word, then stably by the first): equal rows become adjacent
    packed = packed[packed[:, 1].argsort(stable=True)]
    packed = packed[packed[:, 0].argsort(stable=True)]
    assert not bool((packed[1:] == packed[:-1]).all(1).any())
    # the steps the old hash repeated at are distinct here too (a direct look at the period)
    assert not bool((u24[256:] == u24[:-256]).all(1).any())
