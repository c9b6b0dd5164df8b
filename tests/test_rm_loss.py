"""rm_loss: fused Triton cross-entropy kernels (interpreter on CPU) against the eager reference."""
import pytest
import torch

from conftest import poison_like
import rmkernels
import rmkernels.ops.rm_loss as rm_loss_mod
from rmkernels.ops.rm_loss import RMLoss, rm_loss
from rmkernels.reference.loss import rm_loss_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
UNEVEN = (0.7, 2.0, 0.25)


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every kernel output starts as poison, so an element the kernel forgets to write shows."""
    real = rm_loss_mod._new_output
    monkeypatch.setattr(rm_loss_mod, "_new_output", lambda *a: poison_like(real(*a)))


def make_inputs(shape, V, dtype=torch.float32, parts=(-1, 0, 1, 2)):
    logits = (torch.randn(*shape, V) * 3).to(dtype)
    labels = torch.randint(0, V, shape)
    part = torch.tensor(parts)[torch.randint(0, len(parts), shape)]
    return logits, labels, part


def grad_tols(dtype):
    # dlogits is written in the logits dtype; the reference's is the float32 gradient cast to it
    return {torch.float32: (1e-5, 1e-7), torch.float16: (2e-3, 1e-6), torch.bfloat16: (1.6e-2, 1e-5)}[dtype]


def check_against_reference(logits, labels, part, weights=(1.0, 1.0, 1.0), **kw):
    """Values of all four outputs and dlogits of a random combination of them, kernel vs reference."""
    coeffs = torch.rand(4) + 0.1
    grads = []
    outs = []
    for impl in ("triton", "reference"):
        z = logits.detach().clone().requires_grad_(True)
        out = rm_loss(z, labels, part, weights=weights, impl=impl, **({} if impl == "reference" else kw))
        (g,) = torch.autograd.grad(sum(c * v for c, v in zip(coeffs, out)), z)
        outs.append(out)
        grads.append(g)
    (fast, ref), (g_fast, g_ref) = outs, grads
    assert isinstance(fast, RMLoss)
    for name in RMLoss._fields:
        a, b = getattr(fast, name), getattr(ref, name)
        assert a.dtype == torch.float32 and a.shape == ()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    assert g_fast.shape == logits.shape and g_fast.dtype == logits.dtype
    rtol, atol = grad_tols(logits.dtype)
    torch.testing.assert_close(g_fast.float(), g_ref.float(), rtol=rtol, atol=atol)
    return fast, g_fast


# --------------------------------------------------------------------------------------------
# the reference is the spec: check it on a hand-made example
# --------------------------------------------------------------------------------------------
def test_reference_hand_example():
    z = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0], [0.0, 0.0, 3.0]])
    labels = torch.tensor([0, 2, 1, -100])
    part = torch.tensor([0, 1, 0, -1])
    ce = -torch.log_softmax(z, -1)[torch.arange(3), labels[:3]]
    out = rm_loss_reference(z, labels, part, weights=(1.0, 3.0, 1.0))
    torch.testing.assert_close(out.total, (ce[0] + 3 * ce[1] + ce[2]) / 5)
    torch.testing.assert_close(out.reveal, (ce[0] + ce[2]) / 2)
    torch.testing.assert_close(out.mask, ce[1])
    assert out.keep.item() == 0.0


# --------------------------------------------------------------------------------------------
# kernel vs reference
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), UNEVEN])
def test_matches_reference_several_tiles(dtype, weights):
    logits, labels, part = make_inputs((3, 5), 37, dtype)  # V = 37: 3 tiles of 16, the last partial
    part[0, 0], part[0, 1], part[0, 2] = 0, 1, 2  # every part present
    check_against_reference(logits, labels, part, weights, block_v=16)


@pytest.mark.parametrize("dtype", DTYPES)
def test_single_row(dtype):
    logits, labels, part = make_inputs((1,), 37, dtype, parts=(1,))
    out, _ = check_against_reference(logits, labels, part, UNEVEN, block_v=16)
    torch.testing.assert_close(out.total, out.mask)


def test_default_block_and_one_dimensional_logits():
    V = 1001  # not a power of two; the default tile covers it in one step
    logits, labels, part = make_inputs((), V, parts=(0,))
    check_against_reference(logits, labels, part)


def test_all_ignored_but_one():
    logits, labels, part = make_inputs((4, 3), 37)
    part.fill_(-1)
    labels[part < 0] = -100  # ignored labels may hold anything
    part[2, 1], labels[2, 1] = 2, 5
    out, g = check_against_reference(logits, labels, part, UNEVEN, block_v=16)
    ce = -torch.log_softmax(logits[2, 1].float(), -1)[5]
    torch.testing.assert_close(out.total, ce)
    torch.testing.assert_close(out.keep, ce)
    assert out.reveal.item() == 0.0 and out.mask.item() == 0.0
    ignored = torch.ones(4, 3, dtype=torch.bool)
    ignored[2, 1] = False
    assert (g[ignored] == 0).all()


def test_absent_part_is_zero_and_gets_no_gradient():
    logits, labels, part = make_inputs((2, 6), 37, parts=(0, 2))
    z = logits.clone().requires_grad_(True)
    out = rm_loss(z, labels, part, impl="triton", block_v=16)
    assert out.mask.item() == 0.0
    (g,) = torch.autograd.grad(out.mask, z)
    assert (g == 0).all()
    check_against_reference(logits, labels, part, block_v=16)


def test_ignored_rows_with_non_finite_logits_do_not_leak():
    logits, labels, part = make_inputs((2, 4), 37)
    part[0, :2] = 0
    part[1, :2] = -1
    logits[1, 0] = float("nan")
    logits[1, 1] = float("-inf")
    logits[0, 1, :10] = float("-inf")  # -inf entries in a used row are fine
    labels[0, 1] = 20
    z = logits.clone().requires_grad_(True)
    fast = rm_loss(z, labels, part, impl="triton", block_v=16)
    ref = rm_loss(logits, labels, part, impl="reference")
    for a, b in zip(fast, ref):
        assert torch.isfinite(a)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    (g,) = torch.autograd.grad(fast.total, z)
    assert torch.isfinite(g).all() and (g[1, :2] == 0).all()


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_nan_in_a_used_row_propagates(impl):
    logits, labels, part = make_inputs((2, 3), 37, parts=(0, 1))
    logits[1, 2, 30] = float("nan")
    out = rm_loss(logits, labels, part, impl=impl, block_v=16 if impl == "triton" else None)
    assert torch.isnan(out.total) and torch.isnan(out.reveal if part[1, 2] == 0 else out.mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "layout",
    ["row_slice", "transposed", "vocab_slice", "last_dim_strided"],
)
def test_strided_logits(dtype, layout):
    V = 37
    base = (torch.randn(4, 6, 2 * V) * 3).to(dtype)
    logits = {
        "row_slice": base[:, ::2, :V],  # rows V apart inside a wider buffer, every other row
        "transposed": base[..., :V].transpose(0, 1),  # leading dims out of order
        "vocab_slice": base[1:3, 1:5, 5 : 5 + V],
        "last_dim_strided": base[..., ::2][..., :V],  # copied by the launcher
    }[layout]
    labels = torch.randint(0, V, logits.shape[:-1])
    part = torch.randint(-1, 3, logits.shape[:-1])
    part.view(-1)[0] = 0
    check_against_reference(logits, labels, part, UNEVEN, block_v=16)


@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int16, torch.uint8])
def test_narrow_integer_inputs(label_dtype):
    logits, labels, part = make_inputs((3, 4), 37)
    part.view(-1)[0] = 1
    check_against_reference(logits, labels.to(label_dtype), part.to(torch.int8), block_v=16)
    part = part.clamp(min=0).to(torch.uint8)  # uint8 part ids cannot say -1; 255 is unknown, not "ignore"
    check_against_reference(logits, labels.to(label_dtype), part, block_v=16)
    part[1, 1] = 255
    with pytest.raises(ValueError, match="part"):
        rm_loss(logits, labels, part)


def test_kernel_outputs_fully_written():
    """ce / lse / dlogits come from poisoned buffers (fixture); no NaN may survive."""
    logits, labels, part = make_inputs((2, 5), 37)
    part[0, 0] = 0
    ce, lse = torch.ops.rmkernels.rm_ce_fwd(logits, labels, part, 16)
    active = part.reshape(-1) >= 0
    assert torch.isfinite(ce).all() and (ce[~active] == 0).all()
    torch.testing.assert_close(lse[active], torch.logsumexp(logits.reshape(-1, 37), -1)[active])
    dz = torch.ops.rmkernels.rm_ce_bwd(logits, labels, part, lse, torch.rand(10), 16)
    assert torch.isfinite(dz).all() and (dz.reshape(10, 37)[~active] == 0).all()


def test_in_place_gradient_kernel():
    """The fused forward used by rm_linear_loss writes coef * dCE/dz over the logits."""
    logits, labels, part = make_inputs((7,), 37)
    part[0] = 0
    coef = torch.rand(7)
    z = logits.clone().requires_grad_(True)
    ce_ref = torch.where(part >= 0, torch.nn.functional.cross_entropy(z, labels, reduction="none"), 0.0)
    (g_ref,) = torch.autograd.grad((ce_ref * coef).sum(), z)
    buf = logits.clone()
    ce = torch.ops.rmkernels.rm_ce_fwd_grad_(buf, labels, part, coef, 16)
    torch.testing.assert_close(ce, ce_ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(buf, g_ref, rtol=1e-5, atol=1e-7)


def test_opcheck_registrations():
    logits, labels, part = make_inputs((3,), 19)
    part[0] = 2
    torch.library.opcheck(torch.ops.rmkernels.rm_ce_fwd, (logits.requires_grad_(True), labels, part, 16))
    ce, lse = torch.ops.rmkernels.rm_ce_fwd(logits.detach(), labels, part, 16)
    torch.library.opcheck(torch.ops.rmkernels.rm_ce_bwd, (logits.detach(), labels, part, lse, torch.rand(3), 16))
    torch.library.opcheck(torch.ops.rmkernels.rm_ce_fwd_grad_, (logits.detach().clone(), labels, part, torch.rand(3), 16))


def test_public_exports_and_auto_impl():
    assert rmkernels.rm_loss is rm_loss and rmkernels.RMLoss is RMLoss
    logits, labels, part = make_inputs((2, 3), 37)
    part[0, 0] = 0
    auto = rm_loss(logits, labels, part, block_v=16)  # TRITON_INTERPRET=1: auto is the kernel
    fast = rm_loss(logits, labels, part, impl="triton", block_v=16)
    assert all(torch.equal(a, b) for a, b in zip(auto, fast))


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["triton", "reference"])
@pytest.mark.parametrize(
    "case, match",
    [
        ("label_too_big", "labels"),
        ("label_negative", "labels"),
        ("unknown_part", "part"),
        ("part_below_minus_one", "part"),
        ("all_ignored", "missing answer positions"),
        ("empty", "missing answer positions"),
        ("zero_total_weight", "weights"),
    ],
)
def test_bad_targets(impl, case, match):
    V = 11
    logits, labels, part = make_inputs((2, 3), V, parts=(0, 2))
    weights = (1.0, 1.0, 1.0)
    if case == "label_too_big":
        labels[1, 2] = V
    elif case == "label_negative":
        labels[0, 0] = -1
    elif case == "unknown_part":
        part[1, 1] = 3
    elif case == "part_below_minus_one":
        part[1, 1] = -2
    elif case == "all_ignored":
        part.fill_(-1)
    elif case == "empty":
        logits, labels, part = logits[:0], labels[:0], part[:0]
    else:
        part.fill_(2)
        weights = (1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match=match):
        rm_loss(logits, labels, part, weights=weights, impl=impl)


def test_out_of_range_label_at_ignored_position_is_fine():
    logits, labels, part = make_inputs((2, 3), 11, parts=(0,))
    part[0, 1], labels[0, 1] = -1, 99
    check_against_reference(logits, labels, part, block_v=16)


@pytest.mark.parametrize(
    "weights, match",
    [((1.0, -0.5, 1.0), ">= 0"), ((0.0, 0.0, 0.0), "all zero"), ((1.0, 1.0), "3 numbers"),
     ((1.0, float("nan"), 1.0), "finite"), ((1.0, float("inf"), 1.0), "finite"), ("abc", "weights"), (None, "weights")],
)
def test_bad_weights(weights, match):
    logits, labels, part = make_inputs((2, 3), 11, parts=(0,))
    with pytest.raises(ValueError, match=match) as err:
        rm_loss(logits, labels, part, weights=weights)
    assert "weights" in str(err.value)


def test_bad_arguments():
    logits, labels, part = make_inputs((2, 3), 11, parts=(0,))
    cases = [
        (dict(logits=logits.long()), "logits"),
        (dict(logits=logits[..., :0]), "logits"),
        (dict(labels=labels.float()), "labels"),
        (dict(labels=labels[:, :2]), "labels"),
        (dict(part=part.reshape(3, 2)), "part"),
        (dict(part=part.float()), "part"),
        (dict(impl="cuda"), "impl"),
    ]
    for override, match in cases:
        kw = {**dict(logits=logits, labels=labels, part=part), **override}
        impl = kw.pop("impl", "auto")
        with pytest.raises(ValueError, match=match):
            rm_loss(kw["logits"], kw["labels"], kw["part"], impl=impl)


def test_unchecked_bad_input_gives_nan_not_a_crash():
    logits, labels, part = make_inputs((2, 3), 11, parts=(0,))
    labels[0, 0] = 10**6  # would be far out of bounds if dereferenced
    assert torch.isnan(rm_loss(logits, labels, part, check=False, impl="triton", block_v=16).total)
    labels[0, 0] = 1
    part[1, 1] = 7
    assert torch.isnan(rm_loss(logits, labels, part, check=False, impl="triton", block_v=16).total)


# --------------------------------------------------------------------------------------------
# GPU (run by benchmarks/gpu.sh)
# --------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_large_vocab(dtype):
    logits, labels, part = make_inputs((4, 33), 50257, dtype)
    part[0, 0] = 1
    check_against_reference(logits.cuda(), labels.cuda(), part.cuda(), UNEVEN)
