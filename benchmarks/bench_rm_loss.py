"""RM loss: fused kernel vs eager reference, chunked linear loss vs materialised logits (pytest-benchmark).

    python -m pytest benchmarks/bench_rm_loss.py --benchmark-only

Every case times forward + backward. ``extra_info`` records the shape, the achieved GB/s of the
loss kernels (``rm_loss``: the logits are read twice and ``dlogits`` written once) and, for the
linear loss, the peak memory above the inputs: ``torch.cuda.max_memory_allocated`` on a GPU; on a
CPU the peak resident-set growth of a fresh subprocess running one forward + backward.

On a GPU: ``rm_loss`` Triton vs reference (bf16) and ``rm_linear_loss`` Triton (chunked) vs
reference (materialised logits). On a CPU the Triton interpreter measures nothing useful, so
``rm_loss`` times the reference only and ``rm_linear_loss`` compares its eager chunked path
(``impl="reference"``) with the materialised definition (``rm_linear_loss_reference``), both in the
same run.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from rmkernels import rm_linear_loss, rm_loss
from rmkernels.reference.loss import rm_linear_loss_reference

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
LOSS_SHAPES = [(1024, 32000), (4096, 126464)] if CUDA else [(256, 32000)]
LINEAR_SHAPES = [(8192, 4096, 126464), (4096, 2048, 32000)] if CUDA else [(2048, 256, 32000)]


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _targets(N, V, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V, (N,), generator=g)
    part = torch.randint(-1, 3, (N,), generator=g)
    return labels.to(DEV), part.to(DEV)


def _linear_inputs(N, D, V):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, D, generator=g).to(DEV, DTYPE).requires_grad_(True)
    weight = (torch.randn(V, D, generator=g) * D**-0.5).to(DEV, DTYPE).requires_grad_(True)
    return (hidden, weight, *_targets(N, V))


def _linear_step(impl, hidden, weight, labels, part):
    hidden.grad = weight.grad = None
    if impl == "materialised":  # the definition: [N, V] logits, eager loss
        rm_linear_loss_reference(hidden, weight, labels, part).total.backward()
    else:
        rm_linear_loss(hidden, weight, labels, part, check=False, impl=impl).total.backward()
    _sync()


def _cpu_peak_mib(impl, N, D, V) -> float:
    """Run in a fresh process: peak resident-set growth over one forward + backward, MiB (Linux)."""
    _linear_step(impl, *_linear_inputs(8, 16, 64))  # lazily initialised libraries
    inputs = _linear_inputs(N, D, V)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark VmHWM to the current RSS
    before = _proc_status_mib("VmRSS")
    _linear_step(impl, *inputs)
    return _proc_status_mib("VmHWM") - before


def _proc_status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _peak_mib(impl, N, D, V, inputs) -> float:
    if CUDA:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        _linear_step(impl, *inputs)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    code = (
        f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); import json, bench_rm_loss as b; "
        f"print(json.dumps(b._cpu_peak_mib({impl!r}, {N}, {D}, {V})))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("impl", ["triton", "reference"])
@pytest.mark.parametrize("N, V", LOSS_SHAPES)
def test_rm_loss(benchmark, impl, N, V):
    if impl == "triton" and not CUDA:
        pytest.skip("Triton timings need a GPU")
    logits = torch.randn(N, V, device=DEV).to(DTYPE).requires_grad_(True)
    labels, part = _targets(N, V)

    def step():
        logits.grad = None
        rm_loss(logits, labels, part, check=False, impl=impl).total.backward()
        _sync()

    step()  # warm-up (kernel compilation)
    benchmark.group = f"rm_loss fwd+bwd N={N} V={V}"
    benchmark(step)
    benchmark.extra_info["shape"] = f"[{N}, {V}] {DTYPE}"
    benchmark.extra_info["GB/s"] = 3 * logits.numel() * logits.element_size() / benchmark.stats["mean"] / 1e9


@pytest.mark.parametrize("impl", ["triton", "reference", "materialised"])
@pytest.mark.parametrize("N, D, V", LINEAR_SHAPES)
def test_rm_linear_loss(benchmark, impl, N, D, V):
    if impl == "triton" and not CUDA:
        pytest.skip("Triton timings need a GPU")
    if impl == "reference" and CUDA:
        pytest.skip("the eager chunked path is the CPU implementation")
    inputs = _linear_inputs(N, D, V)
    _linear_step(impl, *inputs)  # warm-up
    benchmark.group = f"rm_linear_loss fwd+bwd N={N} D={D} V={V}"
    benchmark.pedantic(_linear_step, args=(impl, *inputs), rounds=5 if CUDA else 3, iterations=1)
    benchmark.extra_info["shape"] = f"N={N} D={D} V={V} {DTYPE}"
    benchmark.extra_info["peak_MiB"] = _peak_mib(impl, N, D, V, inputs)
    print(f"\n{benchmark.group} impl={impl}: {benchmark.stats['mean'] * 1e3:.1f} ms, peak +{benchmark.extra_info['peak_MiB']:.0f} MiB")
