"""rm_linear_stats (fused LM head + RM statistics) against its reference, on every implementation.

Most cases use integer-valued hidden states and weights (|values| <= 2, D < 64), so every logit is an
exact integer multiple of the scale in float32 *and* bfloat16 inputs, whatever the summation order:
all implementations see bit-identical logits, ties are exact, and ids must match exactly.
Random-normal inputs check the probabilities to float32 tolerance.
"""
import pytest
import torch

from conftest import HAS_CUDA, poison_like
import rmkernels.ops.linear_stats as ls_mod
from rmkernels import RMStats, rm_linear_stats, rm_stats
from rmkernels.reference import linear_logits_reference

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-6
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
IMPLS = ["triton", "torch", "ext"]  # the C++ chunk pass is part of the package: a missing build fails


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    """Kernel outputs and partial buffers start as poison, so anything left unwritten shows."""
    real_out, real_part = ls_mod._new_output, ls_mod._new_partial
    monkeypatch.setattr(ls_mod, "_new_output", lambda n, dt, dev: poison_like(real_out(n, dt, dev)))
    monkeypatch.setattr(ls_mod, "_new_partial", lambda shape, dt, dev: poison_like(real_part(shape, dt, dev)))


def run(impl, hidden, weight, tokens, mask_id, **kw):
    """``impl`` of rm_linear_stats; "torch" = the CPU chunked path without the C++ pass."""
    if impl == "torch":  # what impl="auto" runs on CPU without the interpreter and without the C++ pass
        kw.setdefault("chunk_size", 64)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ls_mod, "_chunk_op_available", lambda: False)
            mp.setattr(ls_mod._utils, "triton_interpret", lambda: False)
            assert ls_mod._resolve("auto", hidden.device) == "torch"
            return rm_linear_stats(hidden, weight, tokens, mask_id, impl="auto", **kw)
    if impl == "ext":
        kw.setdefault("chunk_size", 64)  # several chunks even at small V
    return rm_linear_stats(hidden, weight, tokens, mask_id, impl=impl, **kw)


def reference(hidden, weight, tokens, mask_id, **kw):
    kw = {k: v for k, v in kw.items() if k not in ("chunk_size", "split", "blocks", "allow_tf32")}
    return rm_linear_stats(hidden, weight, tokens, mask_id, impl="reference", **kw)


def assert_stats_equal(a: RMStats, b: RMStats, atol=ATOL):
    for name in RMStats._fields:
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape, name
        if name.endswith("_id"):
            assert x.dtype == torch.int64 and torch.equal(x, y), f"{name} differs at {(x != y).nonzero()[:5].tolist()}"
        else:
            assert x.dtype == torch.float32
            torch.testing.assert_close(x, y, atol=atol, rtol=1e-5, equal_nan=True, msg=name)


def int_inputs(N, D, V, dtype, seed, extra_rows=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randint(-2, 3, (N, D), generator=g).to(dtype)
    w = torch.randint(-2, 3, (V + extra_rows, D), generator=g).to(dtype)
    x = torch.randint(0, V, (N,), generator=g)
    return h, w, x


# --------------------------------------------------------------------------------------------
# the reference: hand example
# --------------------------------------------------------------------------------------------
def test_reference_hand_example():
    h = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    w = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 1.0], [9.0, 9.0]])  # row 3: padding (vocab_size=3)
    b = torch.tensor([0.0, -1.0, 0.5, 0.0])
    z = linear_logits_reference(h, w, b, vocab_size=3, suppress_tokens=(2,), logit_scale=2.0)
    ninf = float("-inf")
    assert z.tolist() == [[2.0, 2.0, ninf], [4.0, -2.0, ninf]]  # ((h @ W.T + b) * 2), column 2 suppressed
    st = rm_linear_stats(h, w, torch.tensor([1, 0]), 0, lm_bias=b, vocab_size=3, suppress_tokens=(2,),
                         logit_scale=2.0, impl="reference")
    assert st.top_id.tolist() == [0, 0]  # row 0: tie 0/1 -> lowest id; the mask (0) holds the max
    assert st.best_id.tolist() == [1, 1]
    p = torch.softmax(z, -1)
    torch.testing.assert_close(st.mask_p, p[:, 0])
    torch.testing.assert_close(st.cur_p, torch.stack([p[0, 1], p[1, 0]]))


# --------------------------------------------------------------------------------------------
# every implementation against the reference
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,temperature", [(19, 0.0), (1, 0.0), (5, 0.8)])
def test_matches_reference_exact_logits(impl, dtype, N, temperature):
    """Odd N (crossing the 16-row tile), D = 37 (3 K steps), V = 301 (10 tiles of 32 and a tail)."""
    D, V = 37, 301
    h, w, x = int_inputs(N, D, V, dtype, seed=N + int(10 * temperature))
    w[90] = w[40]  # a tie across tiles (and across vocabulary slices)
    w[41] = w[40]  # a tie inside a tile
    h[0] = w[40].abs().sign() * w[40]  # row 0's maximum is on the tied columns
    M = 7
    x[-1] = M  # the current token is the mask
    kw = dict(temperature=temperature, seed=11, logit_scale=0.25)
    assert_stats_equal(run(impl, h, w, x, M, **kw), reference(h, w, x, M, **kw))


@pytest.mark.parametrize("impl", IMPLS)
def test_mask_holds_the_max_and_ties_with_the_mask(impl):
    """Mask ids 0, 1, 16, V-1 (values the JIT could specialise) holding row 0's maximum; in row 1 a
    neighbour ties with the mask (the lower id wins)."""
    N, D, V = 6, 21, 200
    h, w, x = int_inputs(N, D, V, torch.float32, seed=3)
    for M in (0, 1, 16, V - 1):
        nb = M + 1 if M < V - 1 else M - 1
        w2 = w.clone()
        w2[M] = h[0] * 3  # the mask holds row 0's max
        x2 = x.clone()
        x2[2] = M
        st = run(impl, h, w2, x2, M)
        assert_stats_equal(st, reference(h, w2, x2, M))
        assert int(st.top_id[0]) == M and int(st.best_id[0]) != M
        w2[nb] = w2[M]  # now a neighbour ties with the mask
        st = run(impl, h, w2, x2, M)
        assert_stats_equal(st, reference(h, w2, x2, M))
        assert int(st.top_id[0]) == min(M, nb) and int(st.best_id[0]) == nb


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_logits_probabilities(impl, dtype):
    """Random-normal inputs: probabilities to float32 tolerance; ids equal unless the reference's
    top two logits are within rounding of each other (then either id is the same logit)."""
    g = torch.Generator().manual_seed(5)
    N, D, V = 9, 40, 333
    h = torch.randn(N, D, generator=g).to(dtype)
    w = (torch.randn(V, D, generator=g) / 3).to(dtype)
    b = torch.randn(V, generator=g)
    x = torch.randint(0, V, (N,), generator=g)
    kw = dict(lm_bias=b, logit_scale=1.7)
    a, r = run(impl, h, w, x, 4, **kw), reference(h, w, x, 4, **kw)
    z = linear_logits_reference(h, w, b, logit_scale=1.7)
    for name in ("top_id", "best_id"):
        ia, ir = getattr(a, name), getattr(r, name)
        gap = (z.gather(1, ia[:, None]) - z.gather(1, ir[:, None])).abs().squeeze(1)
        assert bool(((ia == ir) | (gap < 1e-4)).all()), (name, ia, ir)
    for name in ("top_p", "mask_p", "cur_p", "best_p"):
        torch.testing.assert_close(getattr(a, name), getattr(r, name), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("split", [1, 2, 5])
@pytest.mark.parametrize("blocks", [(16, 16, 16), (32, 64, 32)])
def test_triton_split_and_tiles(split, blocks):
    """Few rows over 1..5 vocabulary slices, tiles of 16 (V = 131: a tail of 3) and of 64."""
    h, w, x = int_inputs(3, 33, 131, torch.float16, seed=split)
    w[130] = w[0]  # a tie across the first and the last slice
    for t in (0.0, 1.3):
        kw = dict(temperature=t, seed=6)
        assert_stats_equal(run("triton", h, w, x, 2, split=split, blocks=blocks, **kw), reference(h, w, x, 2, **kw))


@pytest.mark.parametrize("impl", IMPLS)
def test_strided_inputs_padding_rows_bias_suppress(impl):
    """Leading dims, strided hidden / weight / bias / tokens / offset, embedding_size > vocab_size."""
    B, L, D, V, E = 2, 5, 23, 150, 166
    g = torch.Generator().manual_seed(9)
    h_big = torch.randint(-2, 3, (B, 2 * L, D + 3), generator=g).float()
    h = h_big[:, ::2, 1 : D + 1]  # [B, L, D], strided rows and an offset start
    w_big = torch.randint(-2, 3, (E, 2 * D), generator=g).float()
    w = w_big[:, ::2]  # [E, D], column stride 2
    w[V:] = 50.0  # padding rows with huge logits: must be ignored
    b = torch.randint(-3, 4, (2 * E,), generator=g).float()[::2]
    x = torch.randint(0, V, (B, 2 * L), generator=g)[:, 1::2]
    off = (torch.arange(B * 2 * L).reshape(B, 2 * L) * 7 + 2**33)[:, ::2]  # counters above 2**32
    kw = dict(lm_bias=b, vocab_size=V, suppress_tokens=torch.tensor([3, 77, 149]), offset=off, logit_scale=0.5)
    for t in (0.0, 0.9):
        a = run(impl, h, w, x, 10, temperature=t, seed=4, **kw)
        r = reference(h.contiguous(), w.contiguous(), x.contiguous(), 10, temperature=t, seed=4,
                      **{**kw, "lm_bias": b.contiguous(), "offset": off.contiguous()})
        assert a.top_id.shape == (B, L)
        assert_stats_equal(a, r)
        assert bool((a.top_id < V).all()) and not bool(torch.isin(a.best_id, torch.tensor([3, 77, 149])).any())


@pytest.mark.parametrize("impl", IMPLS)
def test_sampled_ids_equal_rm_stats_on_the_same_logits(impl):
    """temperature > 0: the same counter RNG as rm_stats (keyed by row counter and column)."""
    N, D, V = 7, 19, 260
    h, w, x = int_inputs(N, D, V, torch.float32, seed=8)
    off = torch.randint(0, 2**40, (N,))
    z = linear_logits_reference(h, w, logit_scale=0.5)
    for seed in (1, 2):
        a = run(impl, h, w, x, 5, temperature=1.1, seed=seed, offset=off, logit_scale=0.5)
        r = rm_stats(z, x, 5, temperature=1.1, seed=seed, offset=off, impl="reference")
        assert torch.equal(a.top_id, r.top_id) and torch.equal(a.best_id, r.best_id)
        torch.testing.assert_close(a.top_p, r.top_p, atol=ATOL, rtol=1e-5)
    # the noise matters: over two seeds the sampled ids are not the argmax everywhere
    greedy = z.argmax(-1)
    draws = [run(impl, h, w, x, 5, temperature=1.1, seed=s).top_id for s in range(4)]
    assert any(not torch.equal(d, greedy) for d in draws)


# --------------------------------------------------------------------------------------------
# status flags, bad input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_bad_rows_flagged(impl):
    N, D, V = 4, 8, 70
    h, w, x = int_inputs(N, D, V, torch.float32, seed=1)
    w[:, 0] = 1.0
    h[1, 0] = float("nan")  # row 1: NaN logits
    h[2, 0] = float("-inf")  # row 2: every logit -inf
    x[3] = V  # row 3: token out of range
    st = run(impl, h, w, x, 3, check=False)
    r = reference(h, w, x, 3, check=False)
    assert_stats_equal(st, r)
    assert st.top_id.tolist()[1:] == [-1, -1, -1] and st.best_id[0] >= 0
    assert bool(torch.isnan(st.cur_p[1:]).all())
    for bad, what in ((h, "tokens"),):
        with pytest.raises(ValueError, match=what):
            run(impl, bad, w, x, 3)
    x[3] = 0
    with pytest.raises(ValueError, match="NaN"):
        run(impl, h, w, x, 3)
    h[1, 0] = 0.0
    with pytest.raises(ValueError, match="entirely -inf"):
        run(impl, h, w, x, 3)


def test_bad_input_names_the_argument():
    h, w, x = int_inputs(3, 8, 20, torch.float32, seed=0)
    cases = [
        (dict(hidden=h.long()), "hidden"),
        (dict(lm_weight=w[None]), "lm_weight"),
        (dict(lm_weight=w[:, :5]), "lm_weight"),
        (dict(lm_weight=w.half()), "lm_weight"),
        (dict(tokens=x.float()), "tokens"),
        (dict(tokens=x[:2]), "tokens"),
        (dict(mask_id=20), "mask_id"),
        (dict(mask_id=-1), "mask_id"),
        (dict(mask_id=12, vocab_size=12), "mask_id"),
        (dict(vocab_size=21), "vocab_size"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(lm_bias=torch.zeros(19)), "lm_bias"),
        (dict(suppress_tokens=(20,)), "suppress_tokens"),
        (dict(suppress_tokens=torch.tensor([-1])), "suppress_tokens"),
        (dict(suppress_tokens=(1.5, "a")), "suppress_tokens"),
        (dict(temperature=-1.0), "temperature"),
        (dict(logit_scale=float("nan")), "logit_scale"),
        (dict(offset=torch.zeros(2, dtype=torch.int64)), "offset"),
        (dict(impl="cuda"), "impl"),
        (dict(chunk_size=0), "chunk_size"),
    ]
    base = dict(hidden=h, lm_weight=w, tokens=x, mask_id=1)
    for over, name in cases:
        args = {**base, **over}
        with pytest.raises(ValueError, match=name):
            rm_linear_stats(args.pop("hidden"), args.pop("lm_weight"), args.pop("tokens"), args.pop("mask_id"), **args)


def test_empty_and_impl_resolution(monkeypatch):
    h, w, x = int_inputs(0, 8, 20, torch.float32, seed=0)
    for impl in IMPLS:
        assert run(impl, h, w, x, 1).top_id.shape == (0,)
    assert ls_mod._resolve("auto", torch.device("cpu")) == "triton"  # tests run with TRITON_INTERPRET=1
    monkeypatch.setattr(ls_mod, "_chunk_op_available", lambda: False)
    with pytest.raises(ValueError, match="ext"):
        ls_mod._resolve("ext", torch.device("cpu"))


def test_fake_registration():
    """The Triton op's fake implementation gives the outputs' shapes and dtypes (torch.compile / export)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    h, w, x = int_inputs(5, 8, 20, torch.float32, seed=0)
    with FakeTensorMode() as mode:
        args = [mode.from_tensor(t) for t in (h, w)] + [None, None] + [mode.from_tensor(t) for t in (x, torch.arange(5))]
        out = torch.ops.rmkernels.linear_stats_triton(*args, 20, 1, 1.0, 0.0, 0, False, 0, 0, 0, 0)
    real = torch.ops.rmkernels.linear_stats_triton(h, w, None, None, x, torch.arange(5), 20, 1, 1.0, 0.0, 0, False, 0, 0, 0, 0)
    assert [(t.shape, t.dtype) for t in out] == [(t.shape, t.dtype) for t in real]


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.cuda
@pytest.mark.parametrize("dtype,N,blocks", [
    (torch.bfloat16, 32, None), (torch.bfloat16, 300, None),  # autotuned (the configs gpu_linear_stats uses)
    (torch.bfloat16, 1, (16, 64, 32)), (torch.float16, 40, (32, 128, 64)), (torch.float32, 70, (64, 64, 32)),
])
def test_cuda_matches_reference(dtype, N, blocks):
    D, V = 256, 5003
    h, w, x = int_inputs(N, D, V, dtype, seed=N, extra_rows=13)
    w[4000] = w[17]
    for t in (0.0, 0.7):
        kw = dict(temperature=t, seed=2, vocab_size=V, logit_scale=0.125, suppress_tokens=(5, 9))
        got = run("triton", h.cuda(), w.cuda(), x.cuda(), 17, blocks=blocks, **kw)
        assert_stats_equal(RMStats(*(t_.cpu() for t_ in got)), reference(h, w, x, 17, **kw), atol=1e-5)
