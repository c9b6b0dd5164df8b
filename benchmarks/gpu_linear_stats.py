"""GPU benchmark of rm_linear_stats (fused LM head + RM statistics) against cuBLAS GEMM + rm_stats.

    python benchmarks/gpu_linear_stats.py --out DIR [--dry-run]

bf16, D = 4096, V = 126464 (LLaDA-8B's head), N in {32, 1024, 8192} rows. Per N, in one run:
time of the fused kernel vs ``logits = h @ W.T`` (cuBLAS, bf16 logits) followed by ``rm_stats``
(goals: <= 1.0x at N >= 1024, <= 0.8x at N = 32); peak memory above the inputs of both (goal:
fused <= 1/20 of unfused); achieved TFLOP/s as a share of a plain bf16 GEMM measured in the same
run (8192^3, the tensor-core roofline we can reach) and of the unfused GEMM alone; GB/s of the
weight read as a share of a measured device copy bandwidth (the bound at small N). Correctness:
ids against the float32-logits reference (equal except at logit near-ties). Writes
``DIR/gpu_linear_stats.json`` and ``.md``. ``--dry-run``: tiny shapes on the CPU with Triton in the
interpreter (tests the plumbing; no timing meaning).
"""
import argparse
import datetime
import os
import sys
import time

if "--dry-run" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported

import torch  # noqa: E402
import triton  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _gpu_common import write_results  # noqa: E402

from rmkernels import rm_linear_stats, rm_stats  # noqa: E402

NAME = "gpu_linear_stats"


def timer(dev: str):
    """``bench(fn, iters) -> ms per call``: CUDA events on the GPU, wall clock in the dry run."""
    if dev == "cuda":
        def bench(fn, iters=20, warmup=3):
            for _ in range(warmup):
                fn()
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(iters):
                fn()
            b.record()
            torch.cuda.synchronize()
            return a.elapsed_time(b) / iters
    else:
        def bench(fn, iters=1, warmup=0):  # the dry run only tests the plumbing
            t = time.perf_counter()
            for _ in range(iters):
                fn()
            return (time.perf_counter() - t) * 1e3 / iters
    return bench


def peak_mib(fn, dev: str) -> float:
    """Peak memory allocated during ``fn()`` above what was allocated before (MiB; nan on CPU)."""
    if dev != "cuda":
        fn()
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--rows", default=None, help="comma-separated N (default 32,1024,8192; dry run 3,20)")
    args = ap.parse_args()
    dev = "cpu" if args.dry_run else "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device (use --dry-run to test the plumbing on CPU)")
    D, V = (24, 90) if args.dry_run else (4096, 126464)
    rows = [int(n) for n in (args.rows or ("3,20" if args.dry_run else "32,1024,8192")).split(",")]
    dtype = torch.bfloat16
    bench = timer(dev)
    meta = {"gpu": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu (dry run)",
            "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "date": datetime.date.today().isoformat(), "dtype": "bfloat16", "D": D, "V": V, "dry_run": args.dry_run}
    g = torch.Generator(device=dev).manual_seed(0)
    w = (torch.randn(V, D, device=dev, generator=g) * D ** -0.5).to(dtype)
    M = V - 1
    if dev == "cuda":
        # the reachable tensor-core roofline (a large plain bf16 GEMM) and the copy bandwidth
        a = torch.randn(8192, 8192, device=dev, dtype=dtype)
        t = bench(lambda: a @ a, iters=10)
        meta["gemm_tflops"] = 2 * 8192**3 / (t * 1e-3) / 1e12
        del a
        src = torch.empty(2 * 2**30, dtype=torch.uint8, device=dev)
        dst = torch.empty_like(src)
        t = bench(lambda: dst.copy_(src), iters=10)
        meta["copy_GBps"] = 2 * src.numel() / (t * 1e-3) / 1e9
        del src, dst
        torch.cuda.empty_cache()
    print(f"{meta['gpu']} torch {meta['torch']} triton {meta['triton']} cuda {meta['cuda']} bf16 D={D} V={V} "
          f"gemm {meta.get('gemm_tflops', float('nan')):.0f} TFLOP/s copy {meta.get('copy_GBps', float('nan')):.0f} GB/s",
          flush=True)

    out_rows = []
    for N in rows:
        t0 = time.perf_counter()
        h = (torch.randn(N, D, device=dev, generator=g)).to(dtype)
        x = torch.randint(0, V, (N,), device=dev, generator=g)
        fused = lambda: rm_linear_stats(h, w, x, M, check=False, impl="triton")  # noqa: E731
        gemm = lambda: h @ w.T  # noqa: E731
        unfused = lambda: rm_stats(h @ w.T, x, M, check=False, impl="triton")  # noqa: E731
        got = fused()  # compiles and autotunes
        ref = rm_linear_stats(h, w, x, M, impl="reference", check=False)  # float32 logits
        agree = float((got.top_id == ref.top_id).float().mean()) * 0.5 + float((got.best_id == ref.best_id).float().mean()) * 0.5
        pdiff = max(float((getattr(got, k) - getattr(ref, k)).abs().max()) for k in ("top_p", "mask_p", "cur_p", "best_p"))
        del ref
        iters = 10 if N >= 4096 else 20
        if args.dry_run:
            iters = 1
        t_fused, t_unfused, t_gemm = bench(fused, iters), bench(unfused, iters), bench(gemm, iters)
        m_fused, m_unfused = peak_mib(fused, dev), peak_mib(unfused, dev)
        flops = 2.0 * N * D * V
        tflops = flops / (t_fused * 1e-3) / 1e12
        gbs = (V * D + N * D) * 2 / (t_fused * 1e-3) / 1e9  # the weight (and hidden) read once
        row = {
            "N": N, "ids_agree": agree, "max_p_diff": pdiff, "fused_ms": t_fused, "gemm_ms": t_gemm,
            "unfused_ms": t_unfused, "time_ratio": t_fused / t_unfused,
            "goal_time": "<= 0.8" if N <= 32 else "<= 1.0",
            "fused_MiB": m_fused, "unfused_MiB": m_unfused, "mem_ratio": m_fused / m_unfused if m_unfused else float("nan"),
            "TFLOPs": tflops, "roofline_share": tflops / meta["gemm_tflops"] if "gemm_tflops" in meta else float("nan"),
            "vs_gemm_alone": t_gemm / t_fused, "GB/s": gbs,
            "copy_share": gbs / meta["copy_GBps"] if "copy_GBps" in meta else float("nan"),
            "wall_s": time.perf_counter() - t0,
        }
        out_rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        del h, x, got
        if dev == "cuda":
            torch.cuda.empty_cache()
    write_results(args.out, NAME, meta, out_rows,
                  ["N", "ids_agree", "max_p_diff", "fused_ms", "unfused_ms", "time_ratio", "goal_time", "gemm_ms",
                   "fused_MiB", "unfused_MiB", "mem_ratio", "TFLOPs", "roofline_share", "GB/s", "copy_share"])
    bad = [r for r in out_rows if r["ids_agree"] < 0.99 or not r["max_p_diff"] < 1e-3]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
