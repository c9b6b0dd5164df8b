"""GPU benchmark of rm_linear_stats (fused LM head + RM statistics) against cuBLAS GEMM + rm_stats.

    python benchmarks/gpu_linear_stats.py --out DIR              # CUDA (about 60 s on an H200)
    python benchmarks/gpu_linear_stats.py --out DIR --dry-run    # CPU, tiny shapes, interpreter

bf16, D = 4096, V = 126464 (LLaDA-8B's head), N in {32, 1024, 8192} rows. Per N, in one run:

* time of the fused kernel vs ``logits = h @ W.T`` (cuBLAS, bf16 logits) followed by ``rm_stats``
  (Triton), both eager, the L2 flushed before each call (goals: <= 1.0x at N >= 1024, <= 0.8x at
  N = 32), and vs the GEMM alone;
* peak memory above the inputs (``max_memory_allocated`` over a clean baseline) of both paths
  (goal: fused <= 1/20 of unfused);
* achieved TFLOP/s (2 N D V) as a share of a plain 8192^3 bf16 GEMM measured in the same run (the
  tensor-core roofline we can reach), and GB/s of the weight read as a share of the measured copy
  bandwidth (the bound at small N);
* correctness: ids against the float32-logits reference (equal except at logit near-ties) and
  probabilities within 1e-3.

Writes the table ``gpu_linear_stats``; exits 1 if a correctness check fails.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _gpu_common import (  # noqa: E402
    DEV, DRY_RUN, TIMING, Results, bench_ms, copy_bandwidth_gbs, device_info, parse_args, ratio,
)

import torch  # noqa: E402

from rmkernels import rm_linear_stats, rm_stats  # noqa: E402


def peak_mib(fn) -> float:
    """Peak memory allocated during ``fn()`` above what was allocated before it, MiB (CUDA only)."""
    if DEV != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 2**20


def gemm_tflops() -> float:
    """A plain 8192^3 bf16 GEMM: the tensor-core throughput reachable on this device."""
    if DEV != "cuda":
        return float("nan")
    a = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    ms = bench_ms(lambda: a @ a, iters=10, warmup=3, flush=False)
    return 2 * 8192**3 / (ms * 1e-3) / 1e12


def main():
    args = parse_args(__doc__, lambda ap: ap.add_argument("--rows", help="comma-separated N (default 32,1024,8192)"))
    D, V = (24, 90) if DRY_RUN else (4096, 126464)
    rows = [int(n) for n in (args.rows or ("3,20" if DRY_RUN else "32,1024,8192")).split(",")]
    meta = device_info()
    meta.update(dtype="bfloat16", shape=f"N x D={D} hidden, V={V} x D head", copy_GBps=copy_bandwidth_gbs(),
                gemm_TFLOPs=gemm_tflops(), timing=TIMING.split("; speedup")[0] + "; both paths eager")
    res = Results(args.out, "gpu_linear_stats", meta,
                  ["N", "correct", "ids_agree", "fused_ms", "unfused_ms", "time_ratio", "goal", "gemm_ms",
                   "fused_MiB", "unfused_MiB", "mem_ratio", "TFLOPs", "roofline_%", "GB/s", "copy_%"])
    g = torch.Generator(device=DEV).manual_seed(0)
    w = torch.randn(V, D, device=DEV, generator=g).mul_(D ** -0.5).to(torch.bfloat16)
    M = V - 1
    ok_all = True
    for N in rows:
        t0 = time.perf_counter()
        h = torch.randn(N, D, device=DEV, generator=g).to(torch.bfloat16)
        x = torch.randint(0, V, (N,), device=DEV, generator=g)
        fused = lambda: rm_linear_stats(h, w, x, M, check=False, impl="triton")  # noqa: E731
        unfused = lambda: rm_stats(h @ w.T, x, M, check=False, impl="triton")  # noqa: E731
        gemm = lambda: h @ w.T  # noqa: E731
        got = fused()  # compiles and autotunes
        ref = rm_linear_stats(h, w, x, M, check=False, impl="reference")  # float32 logits
        same = (got.top_id == ref.top_id) & (got.best_id == ref.best_id)
        agree = float(same.float().mean())
        pdiff = max(float((getattr(got, k) - getattr(ref, k)).abs().max()) for k in ("top_p", "mask_p", "cur_p", "best_p"))
        del ref, got
        correct = agree >= 0.99 and pdiff < 1e-3
        ok_all &= correct
        iters = 1 if DRY_RUN else (5 if N >= 4096 else 20)
        t_fused = bench_ms(fused, iters=iters)
        t_unfused = bench_ms(unfused, iters=iters)
        t_gemm = bench_ms(gemm, iters=iters)
        m_fused, m_unfused = peak_mib(fused), peak_mib(unfused)
        tflops = 2.0 * N * D * V / (t_fused * 1e-3) / 1e12
        gbs = (V * D + N * D) * 2 / (t_fused * 1e-3) / 1e9  # the weight and hidden read once
        res.add({
            "N": N, "correct": correct, "ids_agree": agree, "max_p_diff": pdiff,
            "fused_ms": t_fused, "unfused_ms": t_unfused, "time_ratio": ratio(t_fused, t_unfused),
            "goal": "<= 0.8" if N <= 32 else "<= 1.0", "gemm_ms": t_gemm, "fused_vs_gemm": ratio(t_fused, t_gemm),
            "fused_MiB": m_fused, "unfused_MiB": m_unfused, "mem_ratio": ratio(m_fused, m_unfused),
            "TFLOPs": tflops, "roofline_%": 100 * ratio(tflops, meta["gemm_TFLOPs"]),
            "GB/s": gbs, "copy_%": 100 * ratio(gbs, meta["copy_GBps"]), "wall_s": time.perf_counter() - t0,
        })
        if DEV == "cuda":
            torch.cuda.empty_cache()
    sys.exit(0 if ok_all else 1)


if __name__ == "__main__":
    main()
