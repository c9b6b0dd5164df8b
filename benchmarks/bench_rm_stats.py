"""rm_stats: Triton kernel vs eager reference (pytest-benchmark).

    python -m pytest benchmarks/bench_rm_stats.py --benchmark-only

On a GPU both run for V in {32000, 126464, 152064} and N in {1, 32, 256, 4096, 16384} (bf16) and
each entry records achieved GB/s in ``extra_info``. On a CPU only the reference runs (the Triton
interpreter measures nothing useful), at the shapes that fit.
"""
import pytest
import torch

from rmkernels import rm_stats

CUDA = torch.cuda.is_available()
VOCABS = [32000, 126464, 152064]
ROWS = [1, 32, 256, 4096, 16384]


def _inputs(N, V):
    dev = "cuda" if CUDA else "cpu"
    dtype = torch.bfloat16 if CUDA else torch.float32
    logits = torch.randn(N, V, device=dev).to(dtype)
    tokens = torch.randint(0, V, (N,), device=dev)
    return logits, tokens


def _run(benchmark, impl, N, V):
    logits, tokens = _inputs(N, V)

    def call():
        out = rm_stats(logits, tokens, V - 1, impl=impl, check=False)
        if CUDA:
            torch.cuda.synchronize()
        return out

    benchmark(call)
    nbytes = logits.numel() * logits.element_size() + N * (8 + 2 * 8 + 4 * 4 + 4)
    benchmark.extra_info["GB/s"] = nbytes / benchmark.stats["mean"] / 1e9
    benchmark.extra_info["shape"] = f"[{N}, {V}] {logits.dtype}"


@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("N", ROWS)
def test_rm_stats_reference(benchmark, N, V):
    if not CUDA and N * V > 256 * 152064:
        pytest.skip("too large for a CPU run")
    benchmark.group = f"rm_stats N={N} V={V}"
    _run(benchmark, "reference", N, V)


@pytest.mark.skipif(not CUDA, reason="Triton timings need a GPU")
@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("N", ROWS)
def test_rm_stats_triton(benchmark, N, V):
    benchmark.group = f"rm_stats N={N} V={V}"
    _run(benchmark, "triton", N, V)
