"""`rmk kernels`: run each kernel beside its eager reference, check they agree, time both.

On a CUDA machine the Triton / CUDA kernels run; on a CPU the C++ kernels run, and the Triton
kernels run only when TRITON_INTERPRET=1 (the interpreter is for correctness, not speed).
"""
from __future__ import annotations

import time

import torch


def _time(fn, repeat: int) -> float:
    fn()  # warm-up (compilation, caches)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeat


def _row(name, shape, ok, t_ref, t_fast, impl):
    speed = f"{t_ref / t_fast:6.2f}x" if t_fast else "   n/a"
    fast = f"{t_fast * 1e3:9.3f}" if t_fast else "      n/a"
    print(f"{name:<16} {shape:<22} {impl:<10} {'ok' if ok else 'MISMATCH':<9} {t_ref * 1e3:9.3f} {fast} {speed}")


def kernels_demo(rows: int = 256, vocab: int = 32000, repeat: int = 5) -> int:
    from rmkernels._utils import triton_interpret
    from rmkernels.ops.rm_stats import rm_stats

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}  torch {torch.__version__}")
    print(f"{'op':<16} {'shape':<22} {'impl':<10} {'check':<9} {'ref ms':>9} {'fast ms':>9} {'speedup':>7}")
    failures = 0

    g = torch.Generator(device="cpu").manual_seed(0)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    logits = torch.randn(rows, vocab, generator=g).to(device=dev, dtype=dtype)
    tokens = torch.randint(0, vocab, (rows,), generator=g).to(dev)
    mask_id = vocab - 1
    ref = lambda: rm_stats(logits, tokens, mask_id, impl="reference")  # noqa: E731
    t_ref = _time(ref, repeat)
    if dev.type == "cuda" or triton_interpret():
        fast = lambda: rm_stats(logits, tokens, mask_id, impl="triton")  # noqa: E731
        a, b = ref(), fast()
        ok = all(torch.equal(x, y) if x.dtype == torch.int64 else torch.allclose(x, y, atol=1e-5) for x, y in zip(a, b))
        t_fast = _time(fast, repeat)
        _row("rm_stats", f"[{rows}, {vocab}] {str(dtype)[6:]}", ok, t_ref, t_fast, "triton")
        failures += not ok
    else:
        _row("rm_stats", f"[{rows}, {vocab}] {str(dtype)[6:]}", True, t_ref, None, "reference")
        print("  (Triton needs CUDA, or TRITON_INTERPRET=1 for the CPU interpreter)")
    return 1 if failures else 0
