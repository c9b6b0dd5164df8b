"""history_embed: the rmkernels._C kernel vs the eager reference (pytest-benchmark).

    python -m pytest benchmarks/bench_history_embed.py --benchmark-only

CPU: B * L = 4096 (4 x 1024), D = 1024, H = 6, float32, V = 32000 (issue target: the C++ kernel
>= 3x the reference on 2 cores). GPU: bf16, B * L = 8192 (8 x 1024), D = 4096, H = 6. Every
position has a full history and is generated (the most work per position). ``extra_info["GB/s"]``
counts (H + 1) rows read and one row written per position.
"""
import pytest
import torch

from rmkernels.ops.history_embed import extension_available, history_embed

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
B, L, D, DTYPE = (8, 1024, 4096, torch.bfloat16) if CUDA else (4, 1024, 1024, torch.float32)
H, V = 6, 32000


def _inputs(requires_grad=False):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(V, D, generator=g).to(DEV, DTYPE)
    input_ids = torch.randint(0, V, (B, L), generator=g).to(DEV)
    history_ids = torch.randint(0, V, (B, H, L), generator=g).to(DEV)
    history_len = torch.full((B,), H, device=DEV)
    token_mask = torch.ones(B, L, dtype=torch.bool, device=DEV)
    gamma = (1 + 0.1 * torch.randn(D, generator=g)).to(DEV).requires_grad_(requires_grad)
    beta = (0.1 * torch.randn(D, generator=g)).to(DEV).requires_grad_(requires_grad)
    return (weight, input_ids, history_ids, history_len, token_mask), gamma, beta


def _skip_unavailable(impl):
    if impl == "ext" and not extension_available(DEV):
        pytest.skip(f"rmkernels._C is not built for {DEV}")


def _sync():
    if CUDA:
        torch.cuda.synchronize()


@pytest.mark.parametrize("impl", ["ext", "reference"])
def test_history_embed_forward(benchmark, impl):
    _skip_unavailable(impl)
    args, gamma, beta = _inputs()

    def call():
        out = history_embed(*args, decay=0.1, ln_weight=gamma, ln_bias=beta, check=False, impl=impl)
        _sync()
        return out

    benchmark.group = f"history_embed forward B*L={B * L} D={D} H={H} {DTYPE}"
    benchmark(call)
    nbytes = B * L * (H + 2) * D * args[0].element_size()
    benchmark.extra_info["GB/s"] = nbytes / benchmark.stats["mean"] / 1e9
    print(f"\n{impl}: {benchmark.stats['mean'] * 1e3:.2f} ms, {benchmark.extra_info['GB/s']:.2f} GB/s")


@pytest.mark.parametrize("impl", ["ext", "reference"])
def test_history_embed_backward_layernorm(benchmark, impl):
    """Forward + backward for the LayerNorm parameters (frozen table: the trainer's usual case)."""
    _skip_unavailable(impl)
    args, gamma, beta = _inputs(requires_grad=True)
    proj = torch.randn(B, L, D, device=DEV).to(DTYPE)

    def call():
        out = history_embed(*args, decay=0.1, ln_weight=gamma, ln_bias=beta, check=False, impl=impl)
        torch.autograd.grad((out * proj).sum(), (gamma, beta))
        _sync()

    benchmark.group = f"history_embed fwd+bwd(LayerNorm) B*L={B * L} D={D} H={H} {DTYPE}"
    benchmark(call)
