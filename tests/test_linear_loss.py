"""rm_linear_loss: chunked LM head + loss (Triton in the interpreter, eager torch chunks) vs the reference."""
import pytest
import torch

from conftest import poison_like
import rmkernels
import rmkernels.ops.rm_loss as rm_loss_mod
from rmkernels.ops.linear_loss import rm_linear_loss
from rmkernels.reference.loss import RMLoss, rm_linear_loss_reference

CHUNKED = ["triton", "reference"]  # both chunked: the Triton kernel / eager torch per chunk
UNEVEN = (0.7, 2.0, 0.25)


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    real = rm_loss_mod._new_output
    monkeypatch.setattr(rm_loss_mod, "_new_output", lambda *a: poison_like(real(*a)))


def make_inputs(shape, D, V, dtype=torch.float32, bias=True):
    hidden = torch.randn(*shape, D).to(dtype)
    weight = (torch.randn(V, D) / D**0.5 * 3).to(dtype)
    b = torch.randn(V).to(dtype) if bias else None
    labels = torch.randint(0, V, shape)
    part = torch.randint(-1, 3, shape)
    part.view(-1)[:3] = torch.tensor([0, 1, 2])[: part.numel()]
    return hidden, weight, b, labels, part


def run(impl, hidden, weight, bias, labels, part, weights=(1.0, 1.0, 1.0), scale=1.7, **kw):
    """Loss and the gradients of ``scale * total`` w.r.t. the float inputs that require grad."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (hidden, weight, bias)]
    fn = rm_linear_loss_reference if impl == "ref" else rm_linear_loss
    if impl == "ref":
        out = fn(*leaves[:2], labels, part, leaves[2], weights)
    else:
        out = fn(*leaves[:2], labels, part, lm_bias=leaves[2], weights=weights, impl=impl, **kw)
    used = [t for t in leaves if t is not None]
    return out, torch.autograd.grad(out.total * scale, used)


def assert_matches_reference(impl, hidden, weight, bias, labels, part, weights=(1.0, 1.0, 1.0), tol=None, **kw):
    out, grads = run(impl, hidden, weight, bias, labels, part, weights, **kw)
    ref, grads_ref = run("ref", hidden, weight, bias, labels, part, weights)
    assert isinstance(out, RMLoss)
    # loss values: both round the logits the same way (the same matmul in the input dtype) and
    # accumulate the loss in float32, so they agree to a few float32 ulps (~2e-7 relative measured,
    # every dtype); the dtype tolerance ``tol`` is for the gradients only
    for name in RMLoss._fields:
        torch.testing.assert_close(getattr(out, name), getattr(ref, name).detach(), rtol=1e-6, atol=1e-6, msg=name)
    rtol, atol = tol or (1e-5, 1e-5)
    for name, g, g_ref in zip(("hidden", "weight", "bias"), grads, grads_ref):
        assert g.shape == g_ref.shape and g.dtype == g_ref.dtype, name
        torch.testing.assert_close(g.float(), g_ref.float(), rtol=rtol, atol=atol, msg=name)
    return out, grads


# --------------------------------------------------------------------------------------------
# values and gradients vs the reference
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", CHUNKED)
@pytest.mark.parametrize("chunk_size", [1, 4, None, 1000])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_reference_fp32(impl, chunk_size, bias):
    inputs = make_inputs((3, 5), 8, 37, bias=bias)  # N = 15: chunks of 4 leave a remainder
    assert_matches_reference(impl, *inputs, UNEVEN, chunk_size=chunk_size, block_v=16)


@pytest.mark.parametrize("impl", CHUNKED)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_matches_reference_half(impl, dtype):
    # logits are rounded to the dtype by the matmul in both; grad_W accumulates over chunks in it,
    # so the gradients get the dtype's tolerance (the loss values are checked at 1e-6 regardless)
    inputs = make_inputs((2, 7), 16, 37, dtype)
    tol = (2e-2, 2e-3) if dtype == torch.float16 else (5e-2, 1e-2)
    assert_matches_reference(impl, *inputs, chunk_size=4, block_v=16, tol=tol)


@pytest.mark.parametrize("impl", CHUNKED)
def test_single_row_and_all_ignored_but_one(impl):
    hidden, weight, bias, labels, part = make_inputs((1,), 8, 37)
    assert_matches_reference(impl, hidden, weight, bias, labels, part, block_v=16)
    hidden, weight, bias, labels, part = make_inputs((9,), 8, 37)
    part.fill_(-1)
    labels.fill_(-100)
    part[4], labels[4] = 1, 3
    out, (g_h, _, _) = assert_matches_reference(impl, hidden, weight, bias, labels, part, chunk_size=2, block_v=16)
    torch.testing.assert_close(out.total, out.mask)
    assert out.reveal.item() == 0.0 and out.keep.item() == 0.0
    assert (g_h[torch.arange(9) != 4] == 0).all()


@pytest.mark.parametrize("impl", CHUNKED)
def test_strided_hidden(impl):
    hidden, weight, bias, labels, part = make_inputs((5, 3), 8, 37)
    hidden = torch.randn(3, 5, 16)[..., ::2].transpose(0, 1)  # [5, 3, 8], not contiguous
    assert_matches_reference(impl, hidden, weight, bias, labels, part, chunk_size=4, block_v=16)


@pytest.mark.parametrize("impl", CHUNKED)
def test_parts_detached_and_frozen_weight(impl):
    hidden, weight, _, labels, part = make_inputs((2, 5), 8, 37, bias=False)
    h = hidden.clone().requires_grad_(True)
    out = rm_linear_loss(h, weight, labels, part, impl=impl, chunk_size=3, block_v=16)  # weight frozen
    assert out.total.requires_grad and not any(p.requires_grad for p in out[1:])
    (out.total * 0.5).backward()
    h_ref = hidden.clone().requires_grad_(True)
    (rm_linear_loss_reference(h_ref, weight, labels, part).total * 0.5).backward()
    torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", CHUNKED)
def test_no_grad_values(impl):
    inputs = make_inputs((2, 5), 8, 37)
    with torch.no_grad():
        out = rm_linear_loss(*inputs[:2], *inputs[3:], lm_bias=inputs[2], impl=impl, chunk_size=4, block_v=16)
    ref = rm_linear_loss_reference(*inputs[:2], *inputs[3:], inputs[2])
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", CHUNKED)
def test_second_backward_raises(impl):
    hidden, weight, bias, labels, part = make_inputs((6,), 8, 37)
    h = hidden.clone().requires_grad_(True)
    out = rm_linear_loss(h, weight, labels, part, impl=impl, block_v=16)
    out.total.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        out.total.backward()


@pytest.mark.parametrize("impl", CHUNKED)
def test_overflowing_ignored_row_does_not_poison_gradients(impl):
    hidden, weight, bias, labels, part = make_inputs((6,), 8, 37, torch.float16)
    weight = weight.abs() + 0.5
    hidden[2], part[2] = 3e4, -1  # its fp16 logits overflow to inf; it carries no loss
    out, grads = run(impl, hidden, weight, bias, labels, part, chunk_size=4, block_v=16)
    ref = rm_linear_loss_reference(hidden, weight, labels, part, bias)
    torch.testing.assert_close(out.total, ref.total, rtol=1e-6, atol=1e-6)  # float32 loss: a few ulps
    assert all(torch.isfinite(g).all() for g in grads)


def test_chunked_paths_agree_with_default_impl():
    assert rmkernels.rm_linear_loss is rm_linear_loss
    inputs = make_inputs((4, 4), 8, 37)
    auto = run("auto", *inputs, chunk_size=5, block_v=16)  # TRITON_INTERPRET=1: auto is the kernel
    fast = run("triton", *inputs, chunk_size=5, block_v=16)
    for a, b in zip([*auto[0], *auto[1]], [*fast[0], *fast[1]]):
        assert torch.equal(a, b)


def test_autocast_bf16_on_cpu():
    hidden, weight, bias, labels, part = make_inputs((3, 4), 16, 37)
    leaves = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rm_linear_loss(leaves[0], leaves[1], labels, part, lm_bias=leaves[2], impl="reference", chunk_size=4)
    out.total.backward()
    assert all(t.grad is not None and t.grad.dtype == torch.float32 for t in leaves)
    casts = [t.to(torch.bfloat16) for t in (hidden, weight, bias)]
    ref = rm_linear_loss_reference(casts[0], casts[1], labels, part, casts[2])
    # autocast runs the same bf16 matmul as the explicit casts; the loss is float32 in both
    torch.testing.assert_close(out.total, ref.total, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", CHUNKED)
def test_bad_targets(impl):
    hidden, weight, bias, labels, part = make_inputs((2, 3), 8, 11)
    part.fill_(0)
    bad = [
        (dict(labels=labels.masked_fill(labels == labels[0, 0], 11)), "labels"),
        (dict(part=part.masked_fill(part == 0, 5)), "part"),
        (dict(part=torch.full_like(part, -1)), "missing answer positions"),
        (dict(weights=(0.0, 1.0, 1.0)), "weights"),
        (dict(weights=(1.0, -1.0, 1.0)), "weights"),
    ]
    for override, match in bad:
        kw = {**dict(labels=labels, part=part, weights=(1.0, 1.0, 1.0)), **override}
        with pytest.raises(ValueError, match=match):
            rm_linear_loss(hidden, weight, kw["labels"], kw["part"], weights=kw["weights"], impl=impl)


def test_bad_arguments():
    hidden, weight, bias, labels, part = make_inputs((2, 3), 8, 11)
    cases = [
        (dict(hidden=hidden.long()), "hidden"),
        (dict(lm_weight=weight[:, :7]), "lm_weight"),
        (dict(lm_weight=weight[0]), "lm_weight"),
        (dict(lm_weight=weight[:0]), "lm_weight"),
        (dict(lm_weight=weight.double()), "lm_weight"),
        (dict(lm_weight=weight.half()), "lm_weight"),
        (dict(lm_bias=bias[:5]), "lm_bias"),
        (dict(lm_bias=bias.half()), "lm_bias"),
        (dict(labels=labels[:1]), "labels"),
        (dict(part=part.float()), "part"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(chunk_size=2.5), "chunk_size"),
        (dict(chunk_size=True), "chunk_size"),
        (dict(impl="cuda"), "impl"),
    ]
    for override, match in cases:
        kw = {**dict(hidden=hidden, lm_weight=weight, labels=labels, part=part, lm_bias=bias), **override}
        with pytest.raises(ValueError, match=match):
            rm_linear_loss(kw.pop("hidden"), kw.pop("lm_weight"), kw.pop("labels"), kw.pop("part"), **kw)


def test_unchecked_bad_label_gives_nan_not_a_crash():
    hidden, weight, bias, labels, part = make_inputs((2, 3), 8, 11)
    part.fill_(0)
    labels[1, 1] = 10**6
    for impl in CHUNKED:
        h = hidden.clone().requires_grad_(True)
        out = rm_linear_loss(h, weight, labels, part, check=False, impl=impl, block_v=16)
        assert torch.isnan(out.total)
        out.total.backward()
        assert torch.isnan(h.grad[1, 1]).all()


# --------------------------------------------------------------------------------------------
# GPU (run by benchmarks/gpu.sh)
# --------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_reference(dtype):
    inputs = [t.cuda() for t in make_inputs((4, 129), 256, 50257, dtype)]
    tol = (1e-4, 1e-4) if dtype == torch.float32 else (5e-2, 1e-2)
    assert_matches_reference("triton", *inputs, UNEVEN, chunk_size=100, tol=tol)
