"""`rmk kernels`: run every op beside its eager reference, check that they agree, time both.

Each op runs the implementation ``impl`` resolves to on this machine (``rmkernels._utils.IMPL_TABLE``):
on a CUDA machine the Triton / CUDA kernels; on a CPU the C++ kernels of ``rmkernels._C``, and
the Triton kernels only in the interpreter (``TRITON_INTERPRET=1``, which checks them but says
nothing about their speed). An op with no kernel that can run here is timed as its reference alone.
``rm_linear_stats`` and ``rm_linear_loss`` are compared with their definitions, which materialise
the ``[N, V]`` logits; without a kernel they run eager chunked paths. The losses are timed
forward + backward.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

OPS = ("rm_stats", "rm_linear_stats", "rm_loss", "rm_linear_loss", "history_embed")


@dataclass
class Case:
    """One row of the table: how to run an op's reference and its implementation on the same inputs."""

    op: str
    shape: str
    impl: str
    reference: Callable[[], object]
    fast: Callable[[], object] | None  # None: no kernel runs here
    atol: float = 1e-5


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, repeat: int, dev: torch.device) -> float:
    fn()  # warm-up (compilation, caches)
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync(dev)
    return (time.perf_counter() - t0) / repeat


def _same(a, b, atol: float) -> bool:
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y, atol) for x, y in zip(a, b))
    if a is None or b is None:
        return a is None and b is None
    if not a.dtype.is_floating_point:
        return torch.equal(a, b)
    return torch.allclose(a.float(), b.float(), atol=atol, rtol=1e-4, equal_nan=True)


def _loss_and_grads(fn, leaves):
    """``fn()``'s RMLoss (detached) and the gradients of its total w.r.t. ``leaves``."""
    for t in leaves:
        t.grad = None
    out = fn()
    out.total.backward()
    return tuple(t.detach() for t in out) + tuple(t.grad.clone() for t in leaves)


def build_cases(dev: torch.device, rows: int, vocab: int, dim: int, history: int = 6) -> list[Case]:
    """The four ops on random inputs of the given size (seeded), with the implementation ``"auto"``
    resolves to on ``dev``."""
    from rmkernels._utils import resolve_impl
    from rmkernels.ops.history_embed import history_embed
    from rmkernels.ops.linear_loss import rm_linear_loss
    from rmkernels.ops.rm_loss import rm_loss
    from rmkernels.ops.rm_stats import rm_stats
    from rmkernels.reference.loss import rm_linear_loss_reference

    g = torch.Generator(device="cpu").manual_seed(0)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    short = str(dtype).replace("torch.", "")
    impl = {op: resolve_impl(op, "auto", dev) for op in OPS}
    kernel = lambda op, fn: None if impl[op] == "reference" else fn  # noqa: E731
    cases = []

    # rm_stats: logits [rows, vocab]
    logits = torch.randn(rows, vocab, generator=g).to(dev, dtype)
    tokens = torch.randint(0, vocab, (rows,), generator=g).to(dev)
    cases.append(Case(
        "rm_stats", f"[{rows}, {vocab}] {short}", impl["rm_stats"],
        lambda: rm_stats(logits, tokens, vocab - 1, impl="reference"),
        kernel("rm_stats", lambda: rm_stats(logits, tokens, vocab - 1, impl=impl["rm_stats"])),
    ))

    # rm_linear_stats: the same statistics from hidden [rows, dim] and the head [vocab, dim]
    from rmkernels.ops.linear_stats import rm_linear_stats

    h_stats = torch.randn(rows, dim, generator=g).to(dev, dtype)
    w_stats = (torch.randn(vocab, dim, generator=g) * dim**-0.5).to(dev, dtype)
    lin_impl = impl["rm_linear_stats"]
    cases.append(Case(
        "rm_linear_stats", f"N={rows} D={dim} V={vocab} {short}",
        "auto (chunked)" if lin_impl == "reference" else lin_impl,
        lambda: rm_linear_stats(h_stats, w_stats, tokens, vocab - 1, impl="reference"),
        lambda: rm_linear_stats(h_stats, w_stats, tokens, vocab - 1, impl="auto"),
        atol=1e-4,
    ))

    # rm_loss: forward + backward on logits [rows, vocab]
    z = logits.detach().clone().requires_grad_(True)
    labels = torch.randint(0, vocab, (rows,), generator=g).to(dev)
    part = torch.randint(-1, 3, (rows,), generator=g).to(dev)
    part[0] = 0  # at least one position carries the loss
    weights = (1.0, 1.0, 2.0)
    cases.append(Case(
        "rm_loss", f"[{rows}, {vocab}] {short} fwd+bwd", impl["rm_loss"],
        lambda: _loss_and_grads(lambda: rm_loss(z, labels, part, weights=weights, impl="reference"), [z]),
        kernel("rm_loss", lambda: _loss_and_grads(
            lambda: rm_loss(z, labels, part, weights=weights, impl=impl["rm_loss"]), [z])),
        atol=1e-2 if dtype == torch.bfloat16 else 1e-5,
    ))

    # rm_linear_loss: hidden [rows, dim] @ W [vocab, dim]^T, forward + backward, vs materialised logits
    hidden = torch.randn(rows, dim, generator=g).to(dev, dtype).requires_grad_(True)
    w = (torch.randn(vocab, dim, generator=g) * dim**-0.5).to(dev, dtype).requires_grad_(True)
    cases.append(Case(
        "rm_linear_loss", f"N={rows} D={dim} V={vocab} {short} fwd+bwd",
        "reference, chunked" if impl["rm_linear_loss"] == "reference" else impl["rm_linear_loss"],
        lambda: _loss_and_grads(lambda: rm_linear_loss_reference(hidden, w, labels, part, None, weights), [hidden, w]),
        lambda: _loss_and_grads(
            lambda: rm_linear_loss(hidden, w, labels, part, weights=weights, impl=impl["rm_linear_loss"]), [hidden, w]),
        atol=5e-2 if dtype == torch.bfloat16 else 1e-4,
    ))

    # history_embed: B * L = rows positions, D = dim, H = history
    B = max(1, min(16, rows))
    L = max(1, rows // B)
    weight = torch.randn(vocab, dim, generator=g).to(dev)
    x = torch.randint(0, vocab, (B, L), generator=g).to(dev)
    hist = torch.randint(0, vocab, (B, history, L), generator=g).to(dev)
    hlen = torch.randint(0, history + 1, (B,), generator=g).to(dev)
    gen = (torch.rand(B, L, generator=g) < 0.8).to(dev)
    args = (weight, x, hist, hlen, gen)
    cases.append(Case(
        "history_embed", f"B*L={B * L} D={dim} H={history} float32", impl["history_embed"],
        lambda: history_embed(*args, decay=0.1, impl="reference"),
        kernel("history_embed", lambda: history_embed(*args, decay=0.1, impl=impl["history_embed"])),
        atol=1e-4,
    ))
    return cases


def kernels_demo(rows: int = 256, vocab: int = 32000, dim: int = 1024, repeat: int = 5, progress: bool = True,
                 ops=OPS, print_fn=print) -> int:
    """Check and time every op against its reference; print a table; return 1 if any check failed.

    Parameters
    ----------
    rows, vocab, dim : int
        Positions, vocabulary size and hidden size of the random inputs.
    repeat : int
        Timed repetitions per implementation (after one warm-up call).
    progress : bool
        Show a progress bar over the ops (on stderr).
    ops : sequence of str
        Which ops to run (default: all four).
    print_fn : callable
        Where the table lines go.

    Returns
    -------
    int
        0 when every kernel matched its reference, else 1 (the shell exit status of ``rmk kernels``).

    Example
    -------
    >>> kernels_demo(rows=8, vocab=64, dim=16, repeat=1, progress=False)  # doctest: +SKIP
    0
    """
    from tqdm.auto import tqdm

    from rmkernels._ext import extension_available
    from rmkernels._utils import triton_interpret

    for name, v in (("rows", rows), ("vocab", vocab), ("dim", dim), ("repeat", repeat)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    unknown = set(ops) - set(OPS)
    if unknown:
        raise ValueError(f"ops must be among {list(OPS)}, got {sorted(unknown)}")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    print_fn(f"device: {name}  torch {torch.__version__}  threads {torch.get_num_threads()}  "
             f"rmkernels._C: {'built' if extension_available(dev) else 'not built'}  "
             f"Triton interpreter: {'on' if triton_interpret() else 'off'}")
    lines = ["| op | shape | impl | check | reference ms | kernel ms | speed-up |", "|---|---|---|---|---|---|---|"]
    failures = 0
    cases = [c for c in build_cases(dev, rows, vocab, dim) if c.op in ops]
    for case in tqdm(cases, desc="rmk kernels", unit="op", disable=not progress, leave=False):
        t_ref = _time(case.reference, repeat, dev)
        if case.fast is None:
            lines.append(f"| {case.op} | {case.shape} | reference (no kernel here) | - | {t_ref * 1e3:.3f} | - | - |")
            continue
        ok = _same(case.fast(), case.reference(), case.atol)
        failures += not ok
        t_fast = _time(case.fast, repeat, dev)
        lines.append(f"| {case.op} | {case.shape} | {case.impl} | {'ok' if ok else 'MISMATCH'} | {t_ref * 1e3:.3f} | "
                     f"{t_fast * 1e3:.3f} | {t_ref / t_fast:.2f}x |")
    for line in lines:
        print_fn(line)
    if dev.type == "cpu" and triton_interpret():
        print_fn("(Triton kernels ran in the CPU interpreter: their timings say nothing about their speed)")
    if not extension_available(dev):
        print_fn("(build rmkernels._C with `pip install --no-build-isolation -e .` for the C++ kernels)")
    return 1 if failures else 0
