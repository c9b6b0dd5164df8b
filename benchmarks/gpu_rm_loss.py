"""GPU correctness + benchmark of the RM loss kernels; run by benchmarks/gpu.sh.

    python benchmarks/gpu_rm_loss.py --out DIR              # on a CUDA machine (well under 90 s on an H200)
    python benchmarks/gpu_rm_loss.py --out DIR --dry-run    # CPU, tiny shapes, interpreter: checks the script

1. Correctness (bf16 and fp32): ``rm_loss`` and ``rm_linear_loss`` (Triton) against the eager
   reference: the four loss values and the gradients (logits; hidden, weight).
2. ``rm_loss`` forward + backward vs eager: the reference (float32 upcast, F.cross_entropy) and a
   plain bf16 ``F.cross_entropy``; time (L2 flushed before each call, all variants eager), achieved
   GB/s (logits read twice, dlogits written once) and its share of the copy bandwidth measured in
   the same run.
3. ``rm_linear_loss`` at N=8192, D=4096, V=126464 bf16 vs materialised logits: time and peak memory
   of forward + backward, as ``max_memory_allocated`` above a clean baseline (the inputs only: the
   previous step's gradients are freed before the baseline is read, so they cannot hide the
   step's own peak), the step's new gradients included. Targets (issue 5): peak <= 1/4 of eager
   and time <= 1.3x eager, checked against both eager variants.

Writes the tables ``rm_loss_correctness``, ``rm_loss`` and ``rm_linear_loss``; exits 1 if a
correctness check fails.
"""
import gc
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _gpu_common import (  # noqa: E402
    DEV, DRY_RUN, TIMING, Results, bench_ms, copy_bandwidth_gbs, device_info, parse_args, ratio,
)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from rmkernels import rm_linear_loss, rm_loss  # noqa: E402
from rmkernels.ops.loss_utils import row_weights  # noqa: E402
from rmkernels.reference.loss import rm_linear_loss_reference, rm_loss_reference  # noqa: E402

WEIGHTS = (1.0, 1.0, 0.5)


def time_ms(fn, iters):
    return bench_ms(fn, iters=iters, warmup=2)


def peak_mib(step, clear):
    """Peak allocated memory of ``step()`` above a clean baseline, MiB (CUDA only).

    ``clear()`` frees what the previous step left (its gradients) *before* the baseline is read:
    a baseline that still holds them (about 1 GiB for an 8B model's LM head in bf16) would hide
    that much of the step's own peak once the step frees them.
    """
    if DEV != "cuda":
        return float("nan")
    clear()
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def targets(N, V, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V, (N,), generator=g)
    part = torch.randint(-1, 3, (N,), generator=g)
    part[:3] = torch.tensor([0, 1, 2])
    return labels.to(DEV), part.to(DEV)


def rel_err(a, b):
    """max |a - b| / max |b| (float32)."""
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def eager_bf16_ce(logits, labels, part):
    """Weighted RM total with a plain F.cross_entropy on the logits as they are (no upcast)."""
    ce = F.cross_entropy(logits, torch.where(part >= 0, labels, -100), reduction="none")
    w = row_weights(part, WEIGHTS)
    return (w * ce).sum() / w.sum()


# ----------------------------------------------------------------------------------------------
# 1. correctness
# ----------------------------------------------------------------------------------------------
def check_rm_loss(N, V, dtype):
    logits = (torch.randn(N, V, device=DEV) * 2).to(dtype)
    labels, part = targets(N, V)
    res = {}
    for impl, fn in (("triton", rm_loss), ("reference", None)):
        z = logits.clone().requires_grad_(True)
        out = fn(z, labels, part, weights=WEIGHTS, impl="triton") if fn else rm_loss_reference(z, labels, part, WEIGHTS)
        (g,) = torch.autograd.grad(out.total + 0.5 * out.mask, z)
        res[impl] = (torch.stack(list(out)).detach(), g)
    (v, g), (v_ref, g_ref) = res["triton"], res["reference"]
    val_err = float((v - v_ref).abs().max())
    grad_err = rel_err(g, g_ref)
    ok = val_err <= 1e-4 and grad_err <= (1e-5 if dtype == torch.float32 else 1e-2)
    return {"case": f"rm_loss N={N} V={V} {str(dtype)[6:]}", "max_value_err": val_err, "grad_rel_err": grad_err, "correct": ok}


def check_linear(N, D, V, dtype):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(N, D, generator=g).to(DEV, dtype)
    weight = (torch.randn(V, D, generator=g) * D**-0.5).to(DEV, dtype)
    labels, part = targets(N, V)
    res = {}
    for impl in ("triton", "reference"):
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        if impl == "triton":
            out = rm_linear_loss(h, w, labels, part, weights=WEIGHTS, impl="triton", chunk_size=max(1, N // 3))
        else:
            out = rm_linear_loss_reference(h, w, labels, part, weights=WEIGHTS)
        grads = torch.autograd.grad(out.total, (h, w))
        res[impl] = (torch.stack([t.detach() for t in out]), *grads)
    (v, gh, gw), (v_ref, gh_ref, gw_ref) = res["triton"], res["reference"]
    val_err = float((v - v_ref).abs().max())
    errs = rel_err(gh, gh_ref), rel_err(gw, gw_ref)
    ok = val_err <= (1e-4 if dtype == torch.float32 else 2e-2) and max(errs) <= (1e-4 if dtype == torch.float32 else 3e-2)
    return {"case": f"rm_linear_loss N={N} D={D} V={V} {str(dtype)[6:]}", "max_value_err": val_err,
            "grad_rel_err": max(errs), "correct": ok}


# ----------------------------------------------------------------------------------------------
# 2. rm_loss vs eager cross-entropy
# ----------------------------------------------------------------------------------------------
def bench_rm_loss(N, V, iters, copy_gbs):
    logits = torch.randn(N, V, device=DEV).to(torch.bfloat16).requires_grad_(True)
    labels, part = targets(N, V)
    variants = {
        "triton": lambda: rm_loss(logits, labels, part, weights=WEIGHTS, check=False).total,
        "eager_reference": lambda: rm_loss_reference(logits, labels, part, WEIGHTS).total,
        "eager_bf16_ce": lambda: eager_bf16_ce(logits, labels, part),
    }

    def step(loss_fn):
        logits.grad = None
        loss_fn().backward()

    row = {"N": N, "V": V}
    for name, loss_fn in variants.items():
        row[f"{name}_ms"] = time_ms(lambda: step(loss_fn), iters)
    row["GB/s"] = 3 * logits.numel() * 2 / (row["triton_ms"] * 1e-3) / 1e9
    row["copy_%"] = 100 * row["GB/s"] / copy_gbs
    row["speedup_vs_reference"] = ratio(row["eager_reference_ms"], row["triton_ms"])
    row["speedup_vs_bf16_ce"] = ratio(row["eager_bf16_ce_ms"], row["triton_ms"])
    return row


# ----------------------------------------------------------------------------------------------
# 3. chunked linear loss vs materialised logits
# ----------------------------------------------------------------------------------------------
def bench_linear(res, N, D, V, iters):
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(N, D, generator=g).to(DEV, torch.bfloat16).requires_grad_(True)
    weight = (torch.randn(V, D, generator=g) * D**-0.5).to(DEV, torch.bfloat16).requires_grad_(True)
    labels, part = targets(N, V)
    variants = {
        "chunked_triton": lambda: rm_linear_loss(hidden, weight, labels, part, weights=WEIGHTS, check=False).total,
        "eager_reference": lambda: rm_linear_loss_reference(hidden, weight, labels, part, weights=WEIGHTS).total,
        "eager_bf16_ce": lambda: eager_bf16_ce(F.linear(hidden, weight), labels, part),
        "materialised_rm_loss": lambda: rm_loss(F.linear(hidden, weight), labels, part, weights=WEIGHTS, check=False).total,
    }

    def clear():
        hidden.grad = weight.grad = None

    def step(loss_fn):
        clear()
        loss_fn().backward()

    chunked = None
    for name, loss_fn in variants.items():
        if not DRY_RUN:
            step(loss_fn)  # warm-up
        ms = time_ms(lambda: step(loss_fn), iters)
        row = {"variant": name, "N": N, "D": D, "V": V, "ms": ms, "peak_MiB": peak_mib(lambda: step(loss_fn), clear)}
        clear()
        if chunked is None:
            chunked = row
        else:
            row["chunked_time_ratio"] = ratio(chunked["ms"], row["ms"])
            row["chunked_mem_ratio"] = ratio(chunked["peak_MiB"], row["peak_MiB"])
            if name.startswith("eager") and DEV == "cuda":  # the targets, against both eager variants
                row["targets_met"] = row["chunked_mem_ratio"] <= 0.25 and row["chunked_time_ratio"] <= 1.3
        res.add(row)


def main():
    args = parse_args(__doc__)
    torch.manual_seed(0)
    meta = device_info()
    meta["copy_GBps"] = copy_bandwidth_gbs()
    meta["timing"] = TIMING.split("; speedup")[0] + "; every variant eager (forward + backward)"
    checks = Results(args.out, "rm_loss_correctness", {**meta, "dtype": "bf16 and fp32"},
                     ["case", "max_value_err", "grad_rel_err", "correct"])
    if DRY_RUN:
        check_cases = [(check_rm_loss, (5, 37, torch.float32)), (check_linear, (7, 8, 37, torch.bfloat16))]
        loss_shapes, loss_iters = [(4, 37)], 1
        lin_shape, lin_iters = (16, 8, 37), 1
    else:
        check_cases = [(check_rm_loss, (256, 126464, torch.bfloat16)), (check_rm_loss, (128, 50257, torch.float32)),
                       (check_rm_loss, (4096, 32000, torch.bfloat16)),
                       (check_linear, (1024, 1024, 32000, torch.bfloat16)), (check_linear, (300, 256, 50257, torch.float32))]
        loss_shapes, loss_iters = [(1024, 32000), (8192, 32000), (8192, 126464)], 10
        lin_shape, lin_iters = (8192, 4096, 126464), 5
    for fn, a in check_cases:
        checks.add(fn(*a))
    loss = Results(args.out, "rm_loss", {**meta, "dtype": "bf16 logits", "shape": f"(N, V) in {loss_shapes}"},
                   ["N", "V", "triton_ms", "eager_reference_ms", "eager_bf16_ce_ms", "GB/s", "copy_%",
                    "speedup_vs_reference", "speedup_vs_bf16_ce"])
    for N, V in loss_shapes:
        loss.add(bench_rm_loss(N, V, loss_iters, meta["copy_GBps"]))
    N, D, V = lin_shape
    lin = Results(args.out, "rm_linear_loss", {**meta, "dtype": "bf16", "shape": f"N={N} D={D} V={V}",
                                               "peak": "max_memory_allocated above a clean baseline (inputs only)"},
                  ["variant", "N", "D", "V", "ms", "peak_MiB", "chunked_time_ratio", "chunked_mem_ratio", "targets_met"])
    bench_linear(lin, N, D, V, lin_iters)
    sys.exit(0 if all(c["correct"] for c in checks.rows) else 1)


if __name__ == "__main__":
    main()
