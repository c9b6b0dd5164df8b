"""Shared helpers for the benchmarks/gpu_*.py scripts (the contract is described in benchmarks/gpu.sh).

Every script::

    from _gpu_common import ...   # first: with --dry-run it sets TRITON_INTERPRET=1 before rmkernels loads
    args = parse_args(__doc__)     # --out DIR (required), --dry-run, plus the script's own options
    res = Results(args.out, "name", meta, columns)   # res.add(row) rewrites DIR/name.json and .md

* ``--dry-run``: tiny shapes on CPU, Triton kernels in the interpreter (CI tests the plumbing).
* Each row is written as soon as it is measured, so a script killed by the deadline keeps its rows.
* Timing (:func:`bench_ms`): CUDA events; memory-bound kernels flush the L2 before each timed call
  (a 256 MiB write, over 4x the 60 MiB L2 of an H100 / H200) so small shapes are not inflated by
  L2-resident data; CUDA-graph replay on request. Compare like with like: a kernel timed as a graph
  replay is compared with the eager reference timed as a graph replay too.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time

DRY_RUN = "--dry-run" in sys.argv
if DRY_RUN:  # before any rmkernels import: Triton kernels run in the CPU interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")
    import warnings

    warnings.filterwarnings("ignore", category=RuntimeWarning)  # the interpreter's numpy exp(-inf - -inf)

import torch  # noqa: E402

DEV = "cpu" if DRY_RUN else "cuda"
L2_FLUSH_BYTES = 256 * 2**20
TIMING = ("dry run: CPU wall clock, Triton in the interpreter (plumbing only, not a measurement)" if DRY_RUN else
          "CUDA events, L2 flushed (256 MiB write) before each timed call; speedup = eager / eager, "
          "speedup_graph = graph replay / graph replay")


def parse_args(doc: str | None = None, extra=None) -> argparse.Namespace:
    """``--out DIR --dry-run`` plus what ``extra(parser)`` adds; exits with a message when a GPU
    script is started without CUDA and without ``--dry-run``."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for NAME.json / NAME.md")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU, Triton in the interpreter")
    if extra is not None:
        extra(ap)
    args = ap.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit(f"{sys.argv[0]}: no CUDA device (use --dry-run on a CPU machine)")
    os.makedirs(args.out, exist_ok=True)
    return args


# ----------------------------------------------------------------------------------------------
# Device description
# ----------------------------------------------------------------------------------------------
def versions() -> dict:
    import triton

    return {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda or "none",
            "python": platform.python_version()}


def device_info() -> dict:
    """Device name and size, library versions, date; on CPU (dry run) the CPU's description."""
    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "dry_run": DRY_RUN, **versions()}
    if DEV == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), sms=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}")
        l2 = getattr(p, "L2_cache_size", None)
        if l2:
            info["l2_mib"] = round(l2 / 2**20, 1)
    else:
        info.update(gpu=f"none (dry run on CPU: {platform.processor() or platform.machine()}, "
                        f"{torch.get_num_threads()} threads)")
    return info


def print_header(name: str, meta: dict) -> None:
    keys = ("gpu", "torch", "triton", "cuda", "dtype", "shape", "copy_GBps", "timing")
    print(f"== {name}: " + ", ".join(f"{k}={meta[k]}" for k in keys if k in meta), flush=True)


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------
_FLUSH_BUF = None


def flush_l2() -> None:
    """Write a buffer larger than the L2 so the next kernel starts with a cold cache (CUDA only)."""
    global _FLUSH_BUF
    if DEV != "cuda":
        return
    if _FLUSH_BUF is None:
        _FLUSH_BUF = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    _FLUSH_BUF.zero_()


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


class GraphUnavailable(RuntimeError):
    """CUDA graphs need a GPU (dry run) or the function could not be captured."""


def capture_graph(fn, calls: int = 1):
    """A CUDA graph of ``calls`` calls of ``fn`` (warmed up on a side stream first); returns its replay."""
    if DEV != "cuda":
        raise GraphUnavailable("no CUDA graphs on CPU")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g):
            for _ in range(calls):
                fn()
    except Exception as exc:  # a host synchronisation or an uncapturable op inside fn
        torch.cuda.synchronize()
        raise GraphUnavailable(f"capture failed: {type(exc).__name__}: {str(exc)[:200]}") from exc
    return g.replay


def bench_ms(fn, iters: int = 20, warmup: int = 3, graph: bool = False, flush: bool = True) -> float:
    """Mean milliseconds per call of ``fn``.

    ``flush``: the L2 is flushed before every timed call (each call timed alone with CUDA events;
    the flush is not timed). ``graph``: ``fn`` is captured in a CUDA graph and the replay is timed
    (without ``flush``: one graph of ``iters`` calls replayed 3 times). On CPU (dry run): wall
    clock, and ``graph`` raises :class:`GraphUnavailable`.
    """
    if DEV != "cuda":
        if graph:
            raise GraphUnavailable("no CUDA graphs on CPU")
        fn()
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t) * 1e3 / iters
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    if flush:
        run = capture_graph(fn) if graph else fn
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for start, end in events:
            flush_l2()
            start.record()
            run()
            end.record()
        torch.cuda.synchronize()
        return sum(s.elapsed_time(e) for s, e in events) / iters
    if graph:
        run, per_run, reps = capture_graph(fn, iters), iters, 3
    else:
        run, per_run, reps = fn, 1, iters
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / (reps * per_run)


def try_bench_ms(fn, notes: list | None = None, what: str = "", **kw) -> float:
    """:func:`bench_ms`, or NaN (with a note) when a CUDA graph is unavailable."""
    try:
        return bench_ms(fn, **kw)
    except GraphUnavailable as exc:
        if notes is not None and DEV == "cuda":
            notes.append(f"{what}: no CUDA graph ({exc})")
        return float("nan")


def copy_bandwidth_gbs(nbytes: int | None = None, iters: int = 10) -> float:
    """Measured device-to-device copy bandwidth (bytes read + bytes written per second, GB/s)."""
    nbytes = nbytes or (2**30 if DEV == "cuda" else 2**23)
    src = torch.empty(nbytes, dtype=torch.uint8, device=DEV)
    dst = torch.empty_like(src)
    t = bench_ms(lambda: dst.copy_(src), iters=iters, flush=False)
    del src, dst
    if DEV == "cuda":
        torch.cuda.empty_cache()
    return 2 * nbytes / (t * 1e-3) / 1e9


def ratio(a: float, b: float) -> float:
    return a / b if b and not (math.isnan(a) or math.isnan(b)) else float("nan")


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------
def _cell(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "**NO**"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.3g}" if abs(v) < 1e5 else f"{v:.0f}"
    return str(v)


class Results:
    """One result table, rewritten to ``DIR/name.json`` and ``DIR/name.md`` after every change.

    Parameters
    ----------
    out_dir, name : the files' folder and base name.
    meta : dict
        Device and versions (:func:`device_info`), dtype, shape, copy bandwidth, timing method...
    columns : list of str
        The markdown table's columns (rows may hold more keys; the JSON keeps them all).
    """

    def __init__(self, out_dir: str, name: str, meta: dict, columns: list[str]):
        self.path = os.path.join(out_dir, name)
        self.name, self.meta, self.columns = name, dict(meta), list(columns)
        self.rows: list[dict] = []
        self.notes: list[str] = []
        os.makedirs(out_dir, exist_ok=True)
        print_header(name, self.meta)
        self.write()

    def add(self, row: dict) -> dict:
        self.rows.append(row)
        print("  " + ", ".join(f"{k}={_cell(row[k])}" for k in self.columns if k in row), flush=True)
        self.write()
        return row

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)
        self.write()

    def write(self) -> None:
        data = {"meta": self.meta, "columns": self.columns, "rows": self.rows, "notes": self.notes}
        _atomic_write(self.path + ".json", json.dumps(data, indent=1, default=str))
        _atomic_write(self.path + ".md", self.markdown())

    def markdown(self) -> str:
        m = self.meta
        head = [f"{m.get('gpu', '?')}; torch {m.get('torch', '?')}, Triton {m.get('triton', '?')}, "
                f"CUDA {m.get('cuda', '?')}; {m.get('date', '?')}"]
        for k in ("dtype", "shape", "copy_GBps", "timing"):
            if k in m:
                v = m[k]
                head.append(f"{k}: {v:.0f}" if isinstance(v, float) else f"{k}: {v}")
        lines = [f"#### {self.name}", "", "  \n".join(head), ""]
        if self.rows:
            lines.append("| " + " | ".join(self.columns) + " |")
            lines.append("|" + "---|" * len(self.columns))
            for r in self.rows:
                lines.append("| " + " | ".join(_cell(r.get(c, "")) for c in self.columns) + " |")
        else:
            lines.append("(no rows)")
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"


def write_results(out_dir: str, name: str, meta: dict, rows: list[dict], columns: list[str]) -> None:
    """Write ``name.json`` and ``name.md`` in one go (see :class:`Results` for incremental writing)."""
    res = Results(out_dir, name, meta, columns)
    res.rows = list(rows)
    res.write()


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
