"""history_embed: the rmkernels._C kernels (C++ on CPU, CUDA on GPU) against the eager reference."""
import math
import os
import subprocess
import sys

import pytest
import torch
from oracles import her_embed_by_hand

import rmkernels.ops.history_embed as he_mod
from rmkernels.ops.history_embed import extension_available, history_embed
from rmkernels.reference.history import history_embed_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# rmkernels._C is part of the package: its tests run unconditionally, so a failed build fails them
# (with the reason) instead of skipping them.


@pytest.fixture(autouse=True)
def poisoned_outputs():
    """Deterministic mode makes at::empty fill new tensors with NaN (fill_uninitialized_memory),
    so an output element a kernel forgets to write shows up."""
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    assert torch.empty(8).isnan().all()
    yield
    torch.use_deterministic_algorithms(prev)


def make_inputs(B, H, L, V, D, dtype=torch.float32, device="cpu", lens=None):
    weight = torch.randn(V, D, device=device).to(dtype)
    input_ids = torch.randint(0, V, (B, L), device=device)
    history_ids = torch.randint(0, V, (B, H, L), device=device)
    if lens is None:  # rows without history beside rows with a partial and a full history
        lens = [(0, H, max(H // 2, 1 if H else 0), 1 if H else 0)[b % 4] for b in range(B)]
    history_len = torch.tensor(lens, device=device)
    token_mask = torch.rand(B, L, device=device) < 0.7
    return weight, input_ids, history_ids, history_len, token_mask


def ln_params(D, device="cpu"):
    return 1 + 0.3 * torch.randn(D, device=device), 0.2 * torch.randn(D, device=device)


def tols(dtype):
    # float32 within 1e-5; half types: both round the same float32 value once (one ulp apart at most)
    return {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-6, rtol=1e-6)}.get(dtype, {})


def assert_matches(out, args, kwargs):
    ref = history_embed_reference(*args, **kwargs)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, **tols(out.dtype))
    weight, input_ids, _, history_len, _ = args
    plain = (history_len == 0).to(out.device)
    assert torch.equal(out[plain], weight[input_ids[plain]])  # rows without history: exact copies


# ----------------------------------------------------------------------------------------------
# independent oracles: the formula by hand, the kernel's tables by explicit values
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["reference", "ext"])
def test_matches_the_formula_computed_by_hand(impl):
    """Reference and kernel against explicit loops over docs/spec.md §3 (tests/oracles.py, float64): odd D
    (a pass-through dimension), full / partial / no history, prompt positions (g = 0: the
    LayerNorm of a zero sum is its bias)."""
    B, H, L, V, D = 3, 3, 4, 7, 5
    weight = torch.randn(V, D)
    input_ids = torch.randint(0, V, (B, L))
    history_ids = torch.randint(0, V, (B, H, L))
    history_len = torch.tensor([3, 0, 1])
    token_mask = torch.tensor([[True, False, True, True], [True, True, False, True], [False, True, True, True]])
    gamma, beta = ln_params(D)
    for decay in (0.0, 0.7):
        for rotate in (True, False):
            for ln in ({}, dict(ln_weight=gamma, ln_bias=beta)):
                kw = dict(decay=decay, rotate=rotate, **ln)
                want = her_embed_by_hand(weight, input_ids, history_ids, history_len, token_mask, **kw)
                got = history_embed(weight, input_ids, history_ids, history_len, token_mask, impl=impl, **kw)
                # float32 accumulation against float64: values O(1), a few float32 ulps
                torch.testing.assert_close(got.double(), want, atol=2e-6, rtol=2e-6)


def test_kernel_tables_hold_the_formula_values():
    """The rotation / decay tables the kernels read, against cos, sin and exp of the formula."""
    H, D = 5, 9  # half = 4: theta_k = d / 10000**(k / 4)
    for rotate, decay in ((True, 0.0), (True, 0.3), (False, 0.5)):
        cos, sin, hw = he_mod._tables(H, D, decay, rotate, torch.device("cpu"), torch.float32)
        assert cos.shape == sin.shape == (H, 4) and hw.shape == (H,)
        theta = [[d / 10000 ** (k / 4) for k in range(4)] for d in range(1, H + 1)]
        want_cos = torch.tensor([[math.cos(t) if rotate else 1.0 for t in row] for row in theta])
        want_sin = torch.tensor([[math.sin(t) if rotate else 0.0 for t in row] for row in theta])
        want_hw = torch.tensor([math.exp(-decay * (d - 1)) for d in range(1, H + 1)])
        # float32 values of angles up to 5 rad: within 1e-6 of the exact ones
        for got, want in ((cos, want_cos), (sin, want_sin), (hw, want_hw)):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------
# CPU extension vs reference
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H", [0, 1, 6])
@pytest.mark.parametrize("D", [32, 33])
def test_cpu_matches_reference(dtype, H, D):
    # B * L = 44 positions: several parallel_for chunks; V not a power of two
    args = make_inputs(4, H, 11, 97, D, dtype)
    for decay in (0.0, 0.4):
        for rotate in (True, False):
            for ln in (None, ln_params(D)):
                kw = dict(decay=decay, rotate=rotate, ln_weight=ln[0] if ln else None, ln_bias=ln[1] if ln else None)
                out = history_embed(*args, impl="ext", **kw)
                assert_matches(out, args, kw)


def test_cpu_single_position_and_empty():
    args = make_inputs(1, 6, 1, 5, 7, lens=[6])
    assert_matches(history_embed(*args, impl="ext"), args, {})
    args = make_inputs(3, 2, 0, 5, 7)
    out = history_embed(*args, impl="ext")
    assert out.shape == (3, 0, 7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_strided_inputs(dtype):
    B, H, L, V, D = 3, 4, 9, 61, 21
    weight, input_ids, history_ids, history_len, token_mask = make_inputs(B, H, L, V, D, dtype)
    padded = torch.randn(V, D + 5).to(dtype)
    padded[:, :D] = weight
    gamma, beta = ln_params(2 * D)
    strided = (
        padded[:, :D],  # row stride D + 5
        input_ids.t().contiguous().t().to(torch.int32),  # transposed layout, int32 ids
        history_ids.permute(2, 0, 1).contiguous().permute(1, 2, 0),
        torch.stack([history_len, history_len], 1)[:, 0],  # stride 2
        token_mask.t().contiguous().t(),
    )
    assert not any(t.is_contiguous() for t in strided)
    kw = dict(decay=0.2, ln_weight=gamma[::2], ln_bias=beta[::2])
    out = history_embed(*strided, impl="ext", **kw)
    assert_matches(out, (weight, input_ids, history_ids, history_len, token_mask), kw)
    # a transposed table (last dimension not contiguous)
    out_t = history_embed(weight.t().contiguous().t(), *strided[1:], impl="ext", **kw)
    assert torch.equal(out_t, out)


def test_auto_picks_the_extension_on_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(he_mod, "history_embed_reference", lambda *a, **k: calls.append(1))
    args = make_inputs(2, 3, 5, 11, 8)
    assert isinstance(history_embed(*args), torch.Tensor) and not calls
    history_embed(*args, impl="reference")
    assert calls


def test_without_extension_falls_back_to_reference(monkeypatch):
    import rmkernels._ext as ext

    monkeypatch.setattr(ext, "_C", None)
    assert not extension_available("cpu")
    args = make_inputs(2, 3, 5, 11, 8)
    assert_matches(history_embed(*args), args, {})
    with pytest.raises(ValueError, match="impl='ext'"):
        history_embed(*args, impl="ext")


def test_package_imports_and_runs_without_the_extension():
    code = (
        "import sys; sys.modules['rmkernels._C'] = None\n"  # makes `import rmkernels._C` fail
        "import torch, rmkernels\n"
        "from rmkernels.ops.history_embed import extension_available\n"
        "assert not extension_available('cpu')\n"
        "w = torch.randn(7, 4); x = torch.randint(0, 7, (2, 3)); h = torch.randint(0, 7, (2, 2, 3))\n"
        "out = rmkernels.history_embed(w, x, h, torch.tensor([0, 2]), torch.ones(2, 3, dtype=torch.bool))\n"
        "assert out.shape == (2, 3, 4) and torch.equal(out[0], w[x[0]])\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


# ----------------------------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------------------------
def grads(impl, weight, rest, gamma, beta, proj, decay):
    w, g, b = (t.detach().clone().requires_grad_() for t in (weight, gamma, beta))
    out = history_embed(w, *rest, decay=decay, ln_weight=g, ln_bias=b, impl=impl)
    (out.double() * proj.double()).sum().backward()
    return out, w.grad, g.grad, b.grad


def assert_gradients_match_reference(weight, rest, gamma, beta, proj, decay=0.3):
    ext = grads("ext", weight, rest, gamma, beta, proj, decay)
    ref = grads("reference", weight, rest, gamma, beta, proj, decay)
    assert [t.dtype for t in ext] == [t.dtype for t in ref]
    if weight.dtype == torch.float32:
        for a, b in zip(ext, ref):
            torch.testing.assert_close(a, b)
        return
    # half types: the incoming gradient is rounded to the table dtype and the table gradient is
    # written in it, so both implementations are a few percent off the exact gradient (the eager
    # CPU reference also accumulates the table gradient in bfloat16). The kernel must be no further
    # from the float64 result than the reference is.
    torch.testing.assert_close(ext[0], ref[0])
    exact = grads("reference", weight.double(), rest, gamma.double(), beta.double(), proj, decay)
    for a, b, t in zip(ext[1:], ref[1:], exact[1:]):
        err = lambda g: ((g.double() - t).abs() / (1 + t.abs())).max().item()  # noqa: E731
        assert err(a) <= 1.25 * err(b) + 1e-3, (err(a), err(b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("D", [16, 17, 256])
def test_cpu_gradients_match_reference(dtype, D):
    # V = 13 < B * L * (H + 1): repeated ids, so the scatter-add must accumulate
    weight, *rest = make_inputs(4, 6, 9, 13, D, dtype)
    gamma, beta = ln_params(D)
    assert_gradients_match_reference(weight, rest, gamma, beta, torch.randn(4, 9, D))


def test_cpu_layernorm_only_gradients_and_sum_identity():
    weight, *rest = make_inputs(4, 3, 5, 11, 8)
    gamma, beta = ln_params(8)
    proj = torch.randn(4, 5, 8)
    # LayerNorm parameters only (the trainer's usual case: a frozen embedding table)
    g1, b1 = gamma.clone().requires_grad_(), beta.clone().requires_grad_()
    (history_embed(weight, *rest, ln_weight=g1, ln_bias=b1, impl="ext") * proj).sum().backward()
    _, _, g_ref, b_ref = grads("reference", weight, rest, gamma, beta, proj, 0.0)
    torch.testing.assert_close(g1.grad, g_ref)
    torch.testing.assert_close(b1.grad, b_ref)
    # the sum over D of LayerNorm(s) (gamma = 1, beta = 0) is 0 for every s, so the gradient of
    # sum(out) with respect to the table counts the current tokens
    w = weight.clone().requires_grad_()
    history_embed(w, *rest, impl="ext").sum().backward()
    counts = torch.bincount(rest[0].flatten(), minlength=11).float()
    torch.testing.assert_close(w.grad, counts[:, None].expand(11, 8), atol=1e-5, rtol=0)


def test_gradcheck_float64():
    weight, *rest = make_inputs(3, 2, 4, 7, 5, torch.float64, lens=[0, 1, 2])
    rest[-1][:] = True
    rest[-1][2, 0] = False
    gamma, beta = (t.double() for t in ln_params(5))

    def fn(w, g, b):
        return history_embed(w, *rest, decay=0.3, ln_weight=g, ln_bias=b, impl="ext")

    inputs = tuple(t.clone().requires_grad_() for t in (weight, gamma, beta))
    assert torch.autograd.gradcheck(fn, inputs, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("with_ln", [True, False])
def test_opcheck(with_ln):
    weight, input_ids, history_ids, history_len, token_mask = make_inputs(3, 2, 4, 9, 6)
    cos, sin, hw = he_mod._tables(2, 6, 0.1, True, weight.device, torch.float32)
    gamma, beta = ln_params(6) if with_ln else (None, None)
    grad_or_none = lambda t: None if t is None else t.requires_grad_()  # noqa: E731
    args = [weight.requires_grad_(), input_ids, history_ids, history_len, token_mask, cos, sin, hw,
            grad_or_none(gamma), grad_or_none(beta), 1e-5]
    torch.library.opcheck(torch.ops.rmkernels.history_embed.default, args)
    grad_out = torch.randn(3, 4, 6)
    for weight_grad in (True, False):
        bargs = [grad_out, weight.detach(), input_ids, history_ids, history_len, token_mask, cos, sin, hw,
                 None if gamma is None else gamma.detach(), 1e-5, weight_grad]
        torch.library.opcheck(torch.ops.rmkernels.history_embed_backward.default, bargs)


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------
def _bad_cases():
    def edit(i, fn):
        return lambda args: [fn(a) if j == i else a for j, a in enumerate(args)]

    return {
        "input_ids high": (edit(1, lambda t: t.index_fill(1, torch.tensor([2]), 11)), {}, "input_ids"),
        "input_ids negative": (edit(1, lambda t: t.index_fill(0, torch.tensor([1]), -1)), {}, "input_ids"),
        "history_ids unused slot": (edit(2, lambda t: t.index_put((torch.tensor([0]), torch.tensor([2])),
                                                                  torch.tensor(99))), {}, "history_ids"),
        "history_len > H": (edit(3, lambda t: t.index_fill(0, torch.tensor([0]), 4)), {}, "history_len"),
        "history_len < 0": (edit(3, lambda t: t.index_fill(0, torch.tensor([1]), -1)), {}, "history_len"),
        "history_ids batch": (edit(2, lambda t: t[:1]), {}, "history_ids"),
        "history_ids length": (edit(2, lambda t: t[..., :-1]), {}, "history_ids"),
        "history_len shape": (edit(3, lambda t: t[:, None]), {}, "history_len"),
        "token_mask shape": (edit(4, lambda t: t[:, :-1]), {}, "token_mask"),
        "token_mask dtype": (edit(4, lambda t: t.long()), {}, "token_mask"),
        "weight dtype": (edit(0, lambda t: t.long()), {}, "weight"),
        "weight 3-D": (edit(0, lambda t: t[None]), {}, "weight"),
        "weight empty": (edit(0, lambda t: t[:, :0]), {}, "weight"),
        "input_ids float": (edit(1, lambda t: t.float()), {}, "input_ids"),
        "device": (edit(4, lambda t: t.to("meta")), {}, "token_mask"),
        "ln_weight size": (lambda a: a, {"ln_weight": torch.ones(7)}, "ln_weight"),
        "ln_bias dtype": (lambda a: a, {"ln_bias": torch.zeros(8, dtype=torch.long)}, "ln_bias"),
        "eps": (lambda a: a, {"eps": 0.0}, "eps"),
        "decay": (lambda a: a, {"decay": float("nan")}, "decay"),
        "impl": (lambda a: a, {"impl": "cuda"}, "impl"),
    }


BAD = _bad_cases()


@pytest.mark.parametrize("impl", ["reference", "ext"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_value_error(case, impl):
    edit, kwargs, name = BAD[case]
    args = edit(list(make_inputs(3, 3, 5, 11, 8, lens=[1, 3, 0])))
    with pytest.raises(ValueError, match=name):
        history_embed(*args, **{"impl": impl, **kwargs})


def test_cpu_kernel_checks_ids_even_without_python_check():
    args = make_inputs(2, 3, 5, 11, 8)
    args[2][1, 0, 4] = 11
    with pytest.raises(ValueError, match="history_ids holds ids outside"):
        history_embed(*args, check=False, impl="ext")
    cos, sin, hw = he_mod._tables(3, 8, 0.0, True, torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="cos must have shape"):
        torch.ops.rmkernels.history_embed(*args, cos[:, :3], sin, hw, None, None, 1e-5)
    with pytest.raises(ValueError, match="hw must have dtype"):
        torch.ops.rmkernels.history_embed(*args, cos, sin, hw.double(), None, None, 1e-5)


# ----------------------------------------------------------------------------------------------
# CUDA (run by benchmarks/gpu.sh on a GPU host)
# ----------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [33, 64, 4096])  # scalar path (odd D), vector paths (1 and 2 items / thread)
@pytest.mark.parametrize("H", [0, 1, 6])
def test_cuda_matches_reference(dtype, D, H):
    args = make_inputs(4, H, 37, 1001, D, dtype, device="cuda")
    for kw in (dict(), dict(decay=0.5, rotate=False), dict(zip(("ln_weight", "ln_bias"), ln_params(D, "cuda")))):
        assert_matches(history_embed(*args, impl="ext", **kw), args, kw)


@pytest.mark.cuda
def test_cuda_strided_and_wide():
    weight, *rest = make_inputs(2, 6, 5, 50, 2 * 1024 * 8 + 16, torch.bfloat16, device="cuda")  # 8 items / thread
    assert_matches(history_embed(weight, *rest, impl="ext"), (weight, *rest), {})
    padded = torch.zeros(50, 70, device="cuda")
    padded[:, :64] = torch.randn(50, 64, device="cuda")
    args = (padded[:, :64][:, 1:], *make_inputs(2, 6, 5, 50, 63, device="cuda")[1:])  # misaligned rows
    assert_matches(history_embed(*args, impl="ext"), args, {})


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("D", [17, 256])
def test_cuda_gradients_match_reference(dtype, D):
    weight, *rest = make_inputs(4, 6, 33, 13, D, dtype, device="cuda")
    gamma, beta = ln_params(D, "cuda")
    assert_gradients_match_reference(weight, rest, gamma, beta, torch.randn(4, 33, D, device="cuda"))


@pytest.mark.cuda
def test_cuda_gradcheck_and_opcheck():
    weight, *rest = make_inputs(3, 2, 4, 7, 5, torch.float64, device="cuda", lens=[0, 1, 2])
    gamma, beta = (t.double() for t in ln_params(5, "cuda"))
    fn = lambda w, g, b: history_embed(w, *rest, decay=0.3, ln_weight=g, ln_bias=b, impl="ext")  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(t.clone().requires_grad_() for t in (weight, gamma, beta)))
    w32 = weight.float().requires_grad_()
    cos, sin, hw = he_mod._tables(2, 5, 0.3, True, w32.device, torch.float32)
    torch.library.opcheck(torch.ops.rmkernels.history_embed.default,
                          [w32, *rest, cos, sin, hw, gamma.float(), beta.float(), 1e-5])


@pytest.mark.cuda
def test_cuda_unchecked_bad_rows_are_nan_without_host_sync():
    args = make_inputs(3, 3, 5, 11, 64, device="cuda", lens=[3, 3, 3])
    args[1][0, 2] = 11  # bad current token: that position only
    args[3][2] = 4  # bad length: the whole row
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = history_embed(*args, check=False, impl="ext")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    bad = torch.zeros(3, 5, dtype=torch.bool, device="cuda")
    bad[0, 2] = True
    bad[2] = True
    assert out[bad].isnan().all() and not out[~bad].isnan().any()
    with pytest.raises(ValueError, match="input_ids"):
        history_embed(*args, impl="ext")
