"""Shared helpers for the benchmarks/gpu_*.py scripts (CUDA only)."""
from __future__ import annotations

import datetime
import json
import os

import torch


def device_info() -> dict:
    p = torch.cuda.get_device_properties(0)
    return {
        "gpu": torch.cuda.get_device_name(0),
        "sms": p.multi_processor_count,
        "memory_gib": round(p.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
    }


def copy_bandwidth_gbs(nbytes: int = 2 * 2**30, iters: int = 20) -> float:
    """Measured device-to-device copy bandwidth (bytes read + bytes written per second, GB/s)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = bench_ms(lambda: dst.copy_(src), iters=iters)
    return 2 * nbytes / (t * 1e-3) / 1e9


def bench_ms(fn, iters: int = 50, warmup: int = 5, graph: bool = False) -> float:
    """Mean milliseconds per call with CUDA events (optionally replaying a captured CUDA graph)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    if graph:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(iters):
                fn()
        run = g.replay
        per_run = iters
        reps = 3
    else:
        run = fn
        per_run = 1
        reps = iters
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / (reps * per_run)


def write_results(out_dir: str, name: str, meta: dict, rows: list[dict], columns: list[str]) -> None:
    """Write ``name.json`` and ``name.md`` (a markdown table of ``rows`` over ``columns``)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    lines = [f"### {name} — {meta.get('gpu', '?')}, {meta.get('date', '?')}", ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
