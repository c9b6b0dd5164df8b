"""Every tensor argument of every op, passed as a strided / transposed / sliced view, gives the same
result as the contiguous tensor (issue 16, defect 4).

Each case re-lays out one argument and compares every output (and the gradients) of one
implementation against the same implementation on contiguous inputs. The padding around a view is
poisoned (NaN, or -1 for integers: an id no op accepts), so a launcher that indexes a view as if
it were contiguous reads poison and fails loudly instead of passing by luck.

Layouts (``relayout``):
* ``every_other``: the last dim with stride 2 (``buf[..., ::2]``)
* ``column``: ``buf[..., 1]`` of a buffer with a trailing dim of 3: every stride x 3 and an element
  offset (the ``x[:, 0]`` pattern; ``reshape(-1)`` keeps it a strided view)
* ``transposed``: same shape, column-major memory (2-D and more)
"""
import pytest
import torch

from conftest import HAS_CUDA
from rmkernels import rm_linear_loss, rm_loss, rm_stats
from rmkernels.ops.history_embed import history_embed

pytestmark = pytest.mark.usefixtures("one_thread")

DEV = "cuda" if HAS_CUDA else "cpu"
LAYOUTS = ["every_other", "column", "transposed"]


def _poison(dtype):
    if dtype.is_floating_point:
        return float("nan")
    return False if dtype == torch.bool else -1


def relayout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """``t``'s values in a non-contiguous layout ``kind`` (the padding around it poisoned)."""
    if kind == "every_other":
        buf = torch.full((*t.shape[:-1], 2 * t.shape[-1]), _poison(t.dtype), dtype=t.dtype, device=t.device)
        buf[..., ::2] = t
        out = buf[..., ::2]
    elif kind == "column":
        buf = torch.full((*t.shape, 3), _poison(t.dtype), dtype=t.dtype, device=t.device)
        buf[..., 1] = t
        out = buf[..., 1]
    else:
        out = t.transpose(0, -1).contiguous().transpose(0, -1)
    assert torch.equal(out, t) or (t.dtype.is_floating_point and torch.equal(out.isnan(), t.isnan()))
    assert not out.is_contiguous()
    return out


def cases(args: dict) -> list:
    """(argument, layout) pairs; ``transposed`` only for tensors of two or more dims."""
    return [(a, k) for a, nd in args.items() for k in LAYOUTS if k != "transposed" or nd >= 2]


def assert_same(a, b, name):
    assert a.shape == b.shape, name
    if a.dtype.is_floating_point:
        # loose enough for another BLAS algorithm on a transposed weight, far below a misread element
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, equal_nan=True, msg=name)
    else:
        assert torch.equal(a, b), name


_EXPECTED: dict = {}


def _expected(key, compute):
    """The contiguous-input result, computed once per (op, impl) (inputs are seeded)."""
    if key not in _EXPECTED:
        _EXPECTED[key] = compute()
    return _EXPECTED[key]


def with_grad(inputs: dict, names) -> dict:
    return {k: (v.detach().requires_grad_(True) if k in names and v is not None else v) for k, v in inputs.items()}


# ----------------------------------------------------------------------------------------------
# rm_stats: logits, tokens, offset (the per-row RNG counter tensor)
# ----------------------------------------------------------------------------------------------
# the C++ kernel is tested on every host (on CPU tensors, a CUDA host included); a missing build fails
STATS_IMPLS = ["triton", "ext"]


def _stats_inputs(dev=DEV):
    g = torch.Generator().manual_seed(0)
    B, L, V = 2, 5, 37
    logits = torch.randn(B, L, V, generator=g).to(dev)
    logits[0, 1, 7] = 9.0  # the mask id holds the max somewhere
    tokens = torch.randint(0, V, (B, L), generator=g).to(dev)
    tokens[1, 2] = 7
    offset = (torch.arange(B * L).view(B, L) * 3 + 100).to(dev)
    return {"logits": logits, "tokens": tokens, "offset": offset}


def _run_stats(impl, inp):
    # sampling (T > 0): the ids come from Gumbel noise keyed by the counters, the probabilities
    # (cur_p included) from the logits and tokens, so every argument shows in the outputs
    return rm_stats(inp["logits"], inp["tokens"], 7, temperature=0.8, seed=11, offset=inp["offset"], impl=impl)


STATS_ARGS = {"logits": 3, "tokens": 2, "offset": 2}


@pytest.mark.parametrize("impl", STATS_IMPLS)
@pytest.mark.parametrize("arg,kind", cases(STATS_ARGS))
def test_rm_stats_strided(arg, kind, impl):
    inp = _stats_inputs(DEV if impl == "triton" else "cpu")
    want = _expected(("rm_stats", impl), lambda: _run_stats(impl, inp))
    got = _run_stats(impl, {**inp, arg: relayout(inp[arg], kind)})
    for name, a, b in zip(want._fields, got, want):
        assert_same(a, b, name)


# ----------------------------------------------------------------------------------------------
# rm_loss: logits, labels, part (values and the logits gradient)
# ----------------------------------------------------------------------------------------------
LOSS_IMPLS = ["triton", "reference"]


def _loss_inputs():
    g = torch.Generator().manual_seed(1)
    B, L, V = 2, 5, 37
    part = torch.randint(-1, 3, (B, L), generator=g)
    part.view(-1)[:3] = torch.tensor([0, 1, 2])
    return {"logits": torch.randn(B, L, V, generator=g).to(DEV),
            "labels": torch.randint(0, V, (B, L), generator=g).to(DEV), "part": part.to(DEV)}


def _run_loss(impl, inp):
    inp = with_grad(inp, ("logits",))
    out = rm_loss(inp["logits"], inp["labels"], inp["part"], weights=(1.0, 0.5, 2.0), impl=impl)
    (grad,) = torch.autograd.grad(out.total + 0.3 * out.keep, inp["logits"])
    return [*out, grad]


LOSS_ARGS = {"logits": 3, "labels": 2, "part": 2}


@pytest.mark.parametrize("impl", LOSS_IMPLS)
@pytest.mark.parametrize("arg,kind", cases(LOSS_ARGS))
def test_rm_loss_strided(arg, kind, impl):
    inp = _loss_inputs()
    want = _expected(("rm_loss", impl), lambda: _run_loss(impl, inp))
    got = _run_loss(impl, {**inp, arg: relayout(inp[arg], kind)})
    for name, a, b in zip(("total", "reveal", "mask", "keep", "dlogits"), got, want):
        assert_same(a, b, name)


# ----------------------------------------------------------------------------------------------
# rm_linear_loss: hidden, lm_weight, lm_bias, labels, part (values and all gradients)
# ----------------------------------------------------------------------------------------------
def _linear_inputs():
    g = torch.Generator().manual_seed(2)
    B, L, D, V = 2, 5, 8, 37
    part = torch.randint(-1, 3, (B, L), generator=g)
    part.view(-1)[:3] = torch.tensor([0, 1, 2])
    return {"hidden": torch.randn(B, L, D, generator=g).to(DEV),
            "lm_weight": (torch.randn(V, D, generator=g) / 2).to(DEV),
            "lm_bias": torch.randn(V, generator=g).to(DEV),
            "labels": torch.randint(0, V, (B, L), generator=g).to(DEV), "part": part.to(DEV)}


def _run_linear(impl, inp):
    inp = with_grad(inp, ("hidden", "lm_weight", "lm_bias"))
    out = rm_linear_loss(inp["hidden"], inp["lm_weight"], inp["labels"], inp["part"], lm_bias=inp["lm_bias"],
                         weights=(1.0, 0.5, 2.0), chunk_size=4, impl=impl)
    grads = torch.autograd.grad(out.total, (inp["hidden"], inp["lm_weight"], inp["lm_bias"]))
    return [*out, *grads]


LINEAR_ARGS = {"hidden": 3, "lm_weight": 2, "lm_bias": 1, "labels": 2, "part": 2}


@pytest.mark.parametrize("impl", ["triton", "reference"])
@pytest.mark.parametrize("arg,kind", cases(LINEAR_ARGS))
def test_rm_linear_loss_strided(arg, kind, impl):
    inp = _linear_inputs()
    want = _expected(("rm_linear_loss", impl), lambda: _run_linear(impl, inp))
    got = _run_linear(impl, {**inp, arg: relayout(inp[arg], kind)})
    for name, a, b in zip(("total", "reveal", "mask", "keep", "d_hidden", "d_weight", "d_bias"), got, want):
        assert_same(a, b, name)


# ----------------------------------------------------------------------------------------------
# history_embed: weight, input_ids, history_ids, history_len, token_mask, ln_weight, ln_bias
# ----------------------------------------------------------------------------------------------
HE_IMPLS = ["reference", "ext"]  # the extension is part of the package: a missing build fails


def _he_inputs():
    g = torch.Generator().manual_seed(3)
    B, H, L, V, D = 3, 3, 5, 11, 8
    return {"weight": torch.randn(V, D, generator=g).to(DEV),
            "input_ids": torch.randint(0, V, (B, L), generator=g).to(DEV),
            "history_ids": torch.randint(0, V, (B, H, L), generator=g).to(DEV),
            "history_len": torch.tensor([0, 3, 2]).to(DEV),
            "token_mask": (torch.rand(B, L, generator=g) < 0.7).to(DEV),
            "ln_weight": (1 + 0.3 * torch.randn(D, generator=g)).to(DEV),
            "ln_bias": (0.2 * torch.randn(D, generator=g)).to(DEV)}


def _run_he(impl, inp):
    inp = with_grad(inp, ("weight", "ln_weight", "ln_bias"))
    out = history_embed(inp["weight"], inp["input_ids"], inp["history_ids"], inp["history_len"], inp["token_mask"],
                        decay=0.3, ln_weight=inp["ln_weight"], ln_bias=inp["ln_bias"], impl=impl)
    proj = torch.linspace(-1, 1, out.numel(), device=out.device).view(out.shape)
    grads = torch.autograd.grad((out * proj).sum(), (inp["weight"], inp["ln_weight"], inp["ln_bias"]))
    return [out, *grads]


HE_ARGS = {"weight": 2, "input_ids": 2, "history_ids": 3, "history_len": 1, "token_mask": 2, "ln_weight": 1,
           "ln_bias": 1}


@pytest.mark.parametrize("impl", HE_IMPLS)
@pytest.mark.parametrize("arg,kind", cases(HE_ARGS))
def test_history_embed_strided(arg, kind, impl):
    inp = _he_inputs()
    want = _expected(("history_embed", impl), lambda: _run_he(impl, inp))
    got = _run_he(impl, {**inp, arg: relayout(inp[arg], kind)})
    for name, a, b in zip(("out", "d_weight", "d_ln_weight", "d_ln_bias"), got, want):
        assert_same(a, b, name)


# ----------------------------------------------------------------------------------------------
# the same cases on a GPU (run by benchmarks/gpu.sh: pytest -m cuda)
# ----------------------------------------------------------------------------------------------
@pytest.mark.cuda
def test_every_case_on_cuda():
    assert DEV == "cuda"
    for impl in STATS_IMPLS:
        for arg, kind in cases(STATS_ARGS):
            test_rm_stats_strided(arg, kind, impl)
    for impl in LOSS_IMPLS:
        for arg, kind in cases(LOSS_ARGS):
            test_rm_loss_strided(arg, kind, impl)
    for impl in ("triton", "reference"):
        for arg, kind in cases(LINEAR_ARGS):
            test_rm_linear_loss_strided(arg, kind, impl)
    assert "ext" in HE_IMPLS, "rmkernels._C has no CUDA kernels"
    for impl in HE_IMPLS:
        for arg, kind in cases(HE_ARGS):
            test_history_embed_strided(arg, kind, impl)
