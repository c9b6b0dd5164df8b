"""rm_stats: Triton kernel (interpreter on CPU) against the eager reference, plus the reference itself."""
import pytest
import torch

from conftest import poison_like
import rmkernels.ops.rm_stats as rm_stats_mod
from rmkernels import RMStats, rm_stats
from rmkernels._ext import extension_available
from rmkernels.reference import rm_stats_reference

ATOL = 1e-5


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every kernel output starts as poison, so an element the kernel forgets to write shows."""
    real = rm_stats_mod._new_output

    def poisoned(n, dtype, device):
        return poison_like(real(n, dtype, device))

    monkeypatch.setattr(rm_stats_mod, "_new_output", poisoned)


def assert_stats_equal(a: RMStats, b: RMStats, atol=ATOL):
    for name in RMStats._fields:
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape, name
        if name.endswith("_id"):
            assert x.dtype == torch.int64 and torch.equal(x, y), f"{name} differs at {(x != y).nonzero()[:5].tolist()}"
        else:
            assert x.dtype == torch.float32
            torch.testing.assert_close(x, y, atol=atol, rtol=0, equal_nan=True, msg=name)


# The C++ CPU kernel is tested on every host, a CUDA one included (its tensors are CPU tensors);
# a missing or broken build fails these tests instead of dropping them (see test_extension_is_built).
KERNELS = ["triton", "ext"]


@pytest.fixture(params=KERNELS)
def kernel(request):
    """Each kernel implementation (Triton: GPU or interpreter; C++: CPU)."""
    return request.param


def test_extension_is_built():
    """rmkernels._C is part of the package: a failed build must fail the suite, not skip tests."""
    from rmkernels._ext import _C_ERROR

    assert extension_available("cpu"), f"rmkernels._C is not importable: {_C_ERROR}"


def run_both(logits, tokens, mask_id, kernel="triton", **kw):
    tuning = {k: kw.pop(k) for k in ("split", "block_v") if k in kw}
    fast = rm_stats(logits, tokens, mask_id, impl=kernel, **(tuning if kernel == "triton" else {}), **kw)
    ref = rm_stats(logits, tokens, mask_id, impl="reference", **kw)
    return fast, ref


# --------------------------------------------------------------------------------------------
# the reference is the spec: check it on a hand-made example
# --------------------------------------------------------------------------------------------
def test_reference_hand_example():
    z = torch.tensor([[1.0, 3.0, 3.0, 0.0], [5.0, 1.0, 1.0, 1.0], [0.0, 0.0, 9.0, 2.0]])
    x = torch.tensor([0, 3, 2])
    M = 2
    top_id, top_p, mask_p, cur_p, best_id, best_p, status = rm_stats_reference(z, x, M)
    p = torch.softmax(z, -1)
    assert top_id.tolist() == [1, 0, 2]  # row 0: tie 1/2 -> lowest id; row 2: the mask holds the max
    assert best_id.tolist() == [1, 0, 3]  # mask excluded
    torch.testing.assert_close(mask_p, p[:, M])
    torch.testing.assert_close(cur_p, p[torch.arange(3), x])
    torch.testing.assert_close(cur_p[2], mask_p[2])  # current token is the mask
    torch.testing.assert_close(top_p, p[torch.arange(3), top_id])
    torch.testing.assert_close(best_p, p[torch.arange(3), best_id])
    assert status.tolist() == [0, 0, 0]


# --------------------------------------------------------------------------------------------
# kernel vs reference
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("V", [1, 7, 1000, 5003])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("split", [1, 3])
def test_matches_reference(V, dtype, split, kernel):
    N = 6
    logits = (torch.randn(N, V) * 3).to(dtype)
    tokens = torch.randint(0, V, (N,))
    mask_id = int(torch.randint(0, V, ()))
    tokens[0] = mask_id  # current token == mask: cur_p must equal mask_p
    fast, ref = run_both(logits, tokens, mask_id, kernel, split=split, block_v=256)
    assert_stats_equal(fast, ref)
    torch.testing.assert_close(fast.cur_p[0], fast.mask_p[0])


@pytest.mark.parametrize("split", [1, 4])
def test_large_vocab_prime(split, kernel):
    V = 32771  # prime, many tiles
    logits = torch.randn(2, V)
    tokens = torch.randint(0, V, (2,))
    fast, ref = run_both(logits, tokens, V - 1, kernel, split=split, block_v=2048)
    assert_stats_equal(fast, ref)


def test_single_row_and_default_tiles(kernel):
    V = 3001
    logits = torch.randn(1, V)
    tokens = torch.randint(0, V, (1,))
    fast, ref = run_both(logits, tokens, 5, kernel)
    assert_stats_equal(fast, ref)


@pytest.mark.parametrize("split", [1, 2])
def test_ties_across_block_boundary(split, kernel):
    V, block = 1000, 64
    logits = torch.randn(6, V)
    # row 0: equal maxima on both sides of a tile boundary -> lower id
    logits[0, block - 1] = logits[0, block] = 50.0
    # row 1: equal maxima in lane 3 of tile 0 and lane 1 of tile 5 (different lanes)
    logits[1, 3] = logits[1, 5 * block + 1] = 50.0
    # row 2: tie across the split boundary (split=2 -> chunk = 512)
    logits[2, 511] = logits[2, 512] = 50.0
    # row 3: the mask holds the max, and the runner-up is tied on both sides of a boundary
    mask_id = 700
    logits[3, mask_id] = 60.0
    logits[3, 2 * block - 1] = logits[3, 2 * block] = 50.0
    # row 4: equal maxima in the SAME lane of different tiles (and different split slices)
    logits[4, 7] = logits[4, 7 + 9 * block] = 50.0
    # row 5: the same for the mask-excluded argmax
    logits[5, mask_id] = 60.0
    logits[5, 9] = logits[5, 9 + 3 * block] = logits[5, 9 + 12 * block] = 50.0
    tokens = torch.tensor([0, 1, 2, mask_id, 4, 5])
    fast, ref = run_both(logits, tokens, mask_id, kernel, split=split, block_v=block)
    assert_stats_equal(fast, ref)
    assert fast.top_id.tolist() == [block - 1, 3, 511, mask_id, 7, mask_id]
    assert fast.best_id.tolist() == [block - 1, 3, 511, 2 * block - 1, 7, 9]


def test_mask_holds_max_everywhere(kernel):
    V = 777
    logits = torch.randn(5, V)
    mask_id = 776  # last id, inside the last partial tile
    logits[:, mask_id] = 20.0
    tokens = torch.randint(0, V, (5,))
    fast, ref = run_both(logits, tokens, mask_id, kernel, block_v=128)
    assert_stats_equal(fast, ref)
    assert (fast.top_id == mask_id).all() and (fast.best_id != mask_id).all()


def test_neg_inf_entries_are_fine(kernel):
    V = 300
    logits = torch.randn(3, V)
    logits[0, :250] = float("-inf")  # whole leading tiles of -inf
    logits[1, ::2] = float("-inf")
    logits[2, 1:] = float("-inf")  # a single finite entry
    tokens = torch.tensor([0, 0, 5])  # tokens with p = 0
    for split in (1, 3):
        fast, ref = run_both(logits, tokens, 7, kernel, split=split, block_v=64)
        assert_stats_equal(fast, ref)
    assert fast.cur_p[0] == 0 and fast.top_id[2] == 0 and fast.top_p[2] == 1


def test_strided_rows_and_leading_shapes(kernel):
    B, L, V = 3, 9, 517
    full = torch.randn(B, L, V)
    views = {
        "slice L (2 leading strides)": full[:, 2:, :],
        "every other row": full[:, ::2, :],
        "last dim not contiguous": full.transpose(0, 1).contiguous().transpose(0, 1)[:, :, :],
        "vocab stride 2 (copied)": torch.randn(B, L, 2 * V)[:, :, ::2],
        "three strided levels (copied)": torch.randn(2, 3, 4, V)[:, 1:, ::2, :],
        "one row": full[1, 3],
    }
    for name, logits in views.items():
        tokens = torch.randint(0, V, logits.shape[:-1])
        for split in (1, 2):
            fast, ref = run_both(logits, tokens, 11, kernel, split=split, block_v=128)
            assert fast.top_id.shape == tokens.shape, name
            assert_stats_equal(fast, ref)
            # same answer as the contiguous copy
            assert_stats_equal(fast, run_both(logits.contiguous(), tokens, 11, kernel, block_v=128)[0])


def test_token_dtypes(kernel):
    V = 250
    logits = torch.randn(4, V)
    for dt in (torch.int32, torch.int64, torch.int16, torch.uint8):
        tokens = torch.randint(0, V, (4,)).to(dt)
        fast, ref = run_both(logits, tokens, 3, kernel, block_v=64)
        assert_stats_equal(fast, ref)


def test_auto_split_plan():
    dev = torch.device("cpu")
    assert rm_stats_mod._plan(1, 126464, 4096, dev, None) > 1  # few rows, big vocabulary -> split
    assert rm_stats_mod._plan(4096, 126464, 4096, dev, None) == 1  # rows fill the machine
    assert rm_stats_mod._plan(1, 100, 128, dev, None) == 1  # one tile
    assert rm_stats_mod._plan(2, 5000, 256, dev, 3) == 3


# --------------------------------------------------------------------------------------------
# Gumbel-max sampling
# --------------------------------------------------------------------------------------------
def test_gumbel_same_seed_same_ids_and_matches_reference(kernel):
    V = 1000
    logits = torch.randn(64, V)
    tokens = torch.randint(0, V, (64,))
    seed = int(torch.randint(0, 2**31, ()))
    a = run_both(logits, tokens, 3, kernel, temperature=0.8, seed=seed, block_v=128)[0]
    b = run_both(logits, tokens, 3, kernel, temperature=0.8, seed=seed, block_v=128, split=3)[0]
    assert torch.equal(a.top_id, b.top_id) and torch.equal(a.best_id, b.best_id)
    c = run_both(logits, tokens, 3, kernel, temperature=0.8, seed=seed + 1, block_v=128)[0]
    assert not torch.equal(a.top_id, c.top_id)
    ref = rm_stats(logits, tokens, 3, temperature=0.8, seed=seed, impl="reference")
    # the same noise bits (tests/test_rng.py); float32 log (numpy / CUDA / C++ vs torch) and
    # z * (1 / T) vs z / T may differ by an ulp, which could only flip a row whose two best scores
    # lie within ~1e-6: about 1e-4 per call here, and the seed is fixed per test (conftest), so the
    # ids are equal -- a wrong noise column in one row of 64 (which ">= 63 / 64" let pass) fails
    assert torch.equal(a.top_id, ref.top_id) and torch.equal(a.best_id, ref.best_id)
    # probabilities stay those of softmax(z) at the sampled ids
    p = torch.softmax(logits.float(), -1)
    torch.testing.assert_close(a.top_p, p.gather(1, a.top_id[:, None]).squeeze(1), atol=ATOL, rtol=0)
    torch.testing.assert_close(a.best_p, p.gather(1, a.best_id[:, None]).squeeze(1), atol=ATOL, rtol=0)
    assert (a.best_id != 3).all()


def test_gumbel_frequencies_match_softmax(kernel):
    """Chi-square goodness of fit of 6000 draws against softmax(z / T) (threshold: p < 1e-6 fails)."""
    V, N, T = 6, 6000, 0.7
    z = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5, -3.0])
    logits = z.expand(N, V)  # stride-0 rows: also exercises a zero row stride
    tokens = torch.zeros(N, dtype=torch.long)
    seed = int(torch.randint(0, 2**31, ()))
    ids = rm_stats(logits, tokens, 5, temperature=T, seed=seed, impl=kernel).top_id
    counts = torch.bincount(ids, minlength=V).double()
    expected = torch.softmax(z.double() / T, -1) * N
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # chi-square with 5 degrees of freedom: P(chi2 > 35.9) = 1e-6
    assert chi2 < 35.9, (counts.tolist(), expected.tolist())


def test_gumbel_offset_tensor_is_batch_invariant(kernel):
    V, N = 500, 16
    logits = torch.randn(N, V)
    tokens = torch.randint(0, V, (N,))
    counters = torch.randint(-(2**40), 2**40, (N,))
    perm = torch.randperm(N)
    a = rm_stats(logits, tokens, 0, temperature=1.0, seed=7, offset=counters, impl=kernel)
    b = rm_stats(logits[perm], tokens[perm], 0, temperature=1.0, seed=7, offset=counters[perm], impl=kernel)
    assert torch.equal(a.top_id[perm], b.top_id)
    single = rm_stats(logits[4:5], tokens[4:5], 0, temperature=1.0, seed=7, offset=counters[4:5], impl=kernel)
    assert single.top_id[0] == a.top_id[4]


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", KERNELS + ["reference"])
def test_bad_input(impl):
    V = 50
    z = torch.randn(4, V)
    x = torch.randint(0, V, (4,))
    cases = [
        (dict(logits=z.long()), "logits"),
        (dict(logits=z.double()), "logits"),
        (dict(tokens=x.float()), "tokens"),
        (dict(tokens=x[:3]), "tokens shape"),
        (dict(tokens=x[None]), "tokens shape"),
        (dict(mask_id=V), "mask_id"),
        (dict(mask_id=-1), "mask_id"),
        (dict(mask_id=1.0), "mask_id"),
        (dict(tokens=x.to("meta")), "tokens is on"),
        (dict(logits=torch.randn(4, 0), mask_id=0), "V == 0"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(offset=torch.zeros(3, dtype=torch.long), temperature=1.0), "offset"),
    ]
    for override, msg in cases:
        args = dict(logits=z, tokens=x, mask_id=3)
        args.update(override)
        with pytest.raises(ValueError, match=msg):
            rm_stats(args.pop("logits"), args.pop("tokens"), args.pop("mask_id"), impl=impl, **args)


@pytest.mark.parametrize("impl", KERNELS + ["reference"])
def test_bad_rows_are_reported(impl):
    V = 200
    x = torch.randint(0, V, (3,))
    z = torch.randn(3, V)
    z[1, 150] = float("nan")
    with pytest.raises(ValueError, match="logits contains NaN"):
        rm_stats(z, x, 0, impl=impl)
    z = torch.randn(3, V)
    z[2] = float("-inf")
    with pytest.raises(ValueError, match="entirely -inf"):
        rm_stats(z, x, 0, impl=impl)
    z = torch.randn(3, V)
    for bad in (V, -1, 10**6):
        xb = x.clone()
        xb[0] = bad
        with pytest.raises(ValueError, match="tokens holds ids outside"):
            rm_stats(z, xb, 0, impl=impl)


@pytest.mark.parametrize("split", [1, 2])
def test_unchecked_bad_rows_get_sentinels(split, kernel):
    V = 300
    z = torch.randn(4, V)
    z[0, 299] = float("nan")
    z[1] = float("-inf")
    x = torch.randint(0, V, (4,))
    x[2] = 10**9  # far out of range: must never be dereferenced
    out, ref = run_both(z, x, 0, kernel, check=False, split=split, block_v=64)
    for t in (out, ref):
        assert t.top_id[:3].tolist() == [-1, -1, -1] and t.best_id[:3].tolist() == [-1, -1, -1]
        assert torch.isnan(t.top_p[:3]).all() and torch.isnan(t.cur_p[:3]).all()
        assert t.top_id[3] >= 0
    assert_stats_equal(out, ref)


def test_impl_names():
    z, x = torch.randn(2, 10), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="impl"):
        rm_stats(z, x, 0, impl="cuda-magic")
    auto = rm_stats(z, x, 0)  # auto works on any device
    assert_stats_equal(auto, rm_stats(z, x, 0, impl="reference"))


def test_opcheck():
    V = 130
    z = torch.randn(3, V)
    x = torch.randint(0, V, (3,))
    ctr = torch.arange(3)
    torch.library.opcheck(
        torch.ops.rmkernels.rm_stats_triton.default, (z, x, ctr, 4, 0.0, 0, 1, 64),
        test_utils=("test_schema", "test_faketensor"),
    )


# --------------------------------------------------------------------------------------------
# CUDA only (run by benchmarks/gpu.sh)
# --------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("V", [126464, 152064])
@pytest.mark.parametrize("N", [1, 32, 1024])
def test_cuda_bf16_large_vocab(V, N):
    logits = torch.randn(N, V, device="cuda").to(torch.bfloat16)
    tokens = torch.randint(0, V, (N,), device="cuda")
    mask_id = V - 7
    logits[0, mask_id] = 30
    fast, ref = run_both(logits, tokens, mask_id)
    assert_stats_equal(fast, ref)


@pytest.mark.cuda
@pytest.mark.parametrize("mask_id", [0, 1, 16, -1])
def test_cuda_int_arguments_the_jit_specialises(mask_id):
    """Triton's JIT turns an int argument equal to 1 into a constexpr (and gives multiples of 16 a
    divisibility hint): ``mask_id == 1`` with sampling failed to compile (issue 16). Every path, with
    one row (L1 == 1) and several, argmax and sampling, V divisible by 16."""
    V = 4096 + 16
    mask_id = mask_id % V
    for N in (1, 33):
        logits = torch.randn(N, V, device="cuda").to(torch.bfloat16)
        tokens = torch.randint(0, V, (N,), device="cuda")
        tokens[0] = mask_id
        for temperature in (0.0, 0.7):
            for split in (1, 3):
                fast, ref = run_both(logits, tokens, mask_id, temperature=temperature, seed=1, split=split)
                if temperature == 0:
                    assert_stats_equal(fast, ref)
                else:  # z * (1/T) vs z / T may flip a near-tie of the perturbed scores in a rare row
                    assert (fast.top_id == ref.top_id).float().mean() >= 0.95
                    assert (fast.best_id != mask_id).all()
                    torch.testing.assert_close(fast.mask_p, ref.mask_p, atol=ATOL, rtol=0)
                    torch.testing.assert_close(fast.cur_p, ref.cur_p, atol=ATOL, rtol=0)


@pytest.mark.cuda
def test_cuda_graph_capture():
    V, N = 126464, 64
    logits = torch.randn(N, V, device="cuda").to(torch.bfloat16)
    tokens = torch.randint(0, V, (N,), device="cuda")
    static = {}
    fn = lambda: rm_stats(logits, tokens, 3, impl="triton", check=False)  # noqa: E731
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static["out"] = fn()
    logits.copy_(torch.randn(N, V, device="cuda").to(torch.bfloat16))
    g.replay()
    torch.cuda.synchronize()
    assert_stats_equal(static["out"], rm_stats(logits, tokens, 3, impl="reference"))


@pytest.mark.cuda
def test_torch_compile():
    V, N = 32000, 48
    logits = torch.randn(N, V, device="cuda").to(torch.bfloat16)
    tokens = torch.randint(0, V, (N,), device="cuda")

    @torch.compile(fullgraph=True)
    def step(z, x):
        st = rm_stats(z, x, 5, impl="triton", check=False)
        return torch.where(st.mask_p > st.cur_p, 5, x), st.top_id

    new, top = step(logits, tokens)
    ref = rm_stats(logits, tokens, 5, impl="reference")
    assert torch.equal(top, ref.top_id)
    assert torch.equal(new, torch.where(ref.mask_p > ref.cur_p, 5, tokens))


def test_opcheck_ext():
    V = 130
    z = torch.randn(3, V)
    x = torch.randint(0, V, (3,))
    outs = rm_stats_mod._alloc_outputs(3, z.device)
    torch.library.opcheck(
        torch.ops.rmkernels.rm_stats_cpu_out.default, (z, x, torch.arange(3), 3, 0, V, 4, 0.0, 0, *outs),
        test_utils=("test_schema",),
    )
