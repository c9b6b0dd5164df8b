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


def _same(a, b, atol=1e-5) -> bool:
    if isinstance(a, (tuple, list)):
        return all(_same(x, y, atol) for x, y in zip(a, b))
    if a.dtype in (torch.int64, torch.int32):
        return torch.equal(a, b)
    return torch.allclose(a.float(), b.float(), atol=atol, rtol=1e-4)


def kernels_demo(rows: int = 256, vocab: int = 32000, repeat: int = 5) -> int:
    from rmkernels._ext import extension_available
    from rmkernels._utils import triton_interpret
    from rmkernels.ops.history_embed import history_embed
    from rmkernels.ops.rm_stats import rm_stats

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}  torch {torch.__version__}  "
          f"threads {torch.get_num_threads()}  rmkernels._C: {'built' if extension_available(dev) else 'not built'}")
    print(f"{'op':<16} {'shape':<22} {'impl':<10} {'check':<9} {'ref ms':>9} {'fast ms':>9} {'speedup':>7}")
    failures = 0
    g = torch.Generator(device="cpu").manual_seed(0)

    # rm_stats: Triton on a GPU, C++ on a CPU
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    logits = torch.randn(rows, vocab, generator=g).to(device=dev, dtype=dtype)
    tokens = torch.randint(0, vocab, (rows,), generator=g).to(dev)
    impl = "triton" if dev.type == "cuda" or triton_interpret() else ("cpp" if extension_available(dev) else None)
    ref = lambda: rm_stats(logits, tokens, vocab - 1, impl="reference")  # noqa: E731
    shape = f"[{rows}, {vocab}] {str(dtype)[6:]}"
    if impl:
        fast = lambda: rm_stats(logits, tokens, vocab - 1, impl=impl)  # noqa: E731
        ok = _same(ref(), fast())
        _row("rm_stats", shape, ok, _time(ref, repeat), _time(fast, repeat), impl)
        failures += not ok
    else:
        _row("rm_stats", shape, True, _time(ref, repeat), None, "reference")

    # history_embed: C++ on a CPU, CUDA on a GPU
    B, L, D, H, V = 16, 256, 1024, 6, 32000
    weight = torch.randn(V, D, generator=g).to(dev)
    x = torch.randint(0, V, (B, L), generator=g).to(dev)
    hist = torch.randint(0, V, (B, H, L), generator=g).to(dev)
    hlen = torch.randint(0, H + 1, (B,), generator=g).to(dev)
    gen = (torch.rand(B, L, generator=g) < 0.8).to(dev)
    args = (weight, x, hist, hlen, gen)
    ref = lambda: history_embed(*args, decay=0.1, impl="reference")  # noqa: E731
    shape = f"B*L={B * L} D={D} H={H}"
    if extension_available(dev):
        fast = lambda: history_embed(*args, decay=0.1, impl="ext")  # noqa: E731
        ok = _same(ref(), fast(), atol=1e-4)
        _row("history_embed", shape, ok, _time(ref, repeat), _time(fast, repeat), "ext")
        failures += not ok
    else:
        _row("history_embed", shape, True, _time(ref, repeat), None, "reference")
    if failures == 0 and not impl:
        print("  (build rmkernels._C with `pip install --no-build-isolation -e .` for the C++ kernels)")
    return 1 if failures else 0
