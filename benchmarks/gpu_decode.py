"""GPU benchmark of the decoder's own time per step beside a forward of an LLaDA-8B-shaped model.

    python benchmarks/gpu_decode.py --out DIR [--dry-run] [--layers 32]

Everything is timed under ``torch.no_grad()``, as ``generate`` runs (the default HistoryNorm's
parameters require grad).

* sampler: ``FastDecoder.step`` with a free-forward model (B = 8, L = 1024, V = 126464, bf16,
  D = 4096, H = 0 and 6): rm_stats over [8192, 126464] logits, reveal / re-mask decisions, history
  push and the HER input embeddings; eager launches and CUDA-graph replay.
* fast vs reference: ``generate`` for a few steps with the device-resident fast path and with the
  readable per-row reference loop, both eager, per step (the speed-up over eager of the sampler).
* forward: a bidirectional transformer of LLaDA-8B's shape (d 4096, SwiGLU 12288, 32 heads,
  V 126464) with random weights, built directly on the GPU in bf16 (no fp32 host copy), ``--layers``
  of its 32 layers timed and the time scaled to 32; eager and CUDA-graph replay.
* share of forward: sampler / forward, like with like (eager / eager, graph / graph).
Target (decoder issue): sampler time per step < 5% of the forward.

Self-contained on purpose: the native LLaDA / Dream models (rmkernels/models, another issue) will
get their own decode / KV-cache benchmark script.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _gpu_common import DEV, DRY_RUN, Results, bench_ms, device_info, parse_args, ratio, try_bench_ms  # noqa: E402
from _decode_common import FixedLogitsModel  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from rmkernels import DecodeConfig, generate  # noqa: E402
from rmkernels.decode import RMModel  # noqa: E402
from rmkernels.decode.canvas import build_canvas  # noqa: E402
from rmkernels.decode.fast import FastDecoder  # noqa: E402

FULL_LAYERS = 32


class Block(nn.Module):
    def __init__(self, d, ffn, heads):
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.up = nn.Linear(d, 2 * ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)

    def forward(self, h):
        B, L, D = h.shape
        q, k, v = self.qkv(self.n1(h)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        h = h + self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, D))
        a, b = self.up(self.n2(h)).chunk(2, -1)
        return h + self.down(F.silu(a) * b)


class LLaDAShaped(nn.Module):
    def __init__(self, layers=32, d=4096, ffn=12288, heads=32, vocab=126464):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, ffn, heads) for _ in range(layers))
        self.norm = nn.RMSNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None):
        h = self.emb(input_ids) if inputs_embeds is None else inputs_embeds
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.norm(h))


def build_on_device(layers: int, dims: dict, dtype=torch.bfloat16) -> nn.Module:
    """The model created directly on ``DEV`` in ``dtype`` (parameters initialised there; no
    full-precision copy on the host)."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(DEV):
            model = LLaDAShaped(layers=layers, **dims)
    finally:
        torch.set_default_dtype(prev)
    return model.eval()


_MODELS: dict = {}


def fixed_model(L, V, D):
    """One free-forward model per shape (its [L, V] logits are drawn on the host once)."""
    if (L, V, D) not in _MODELS:
        _MODELS[(L, V, D)] = FixedLogitsModel(L, V, D, mask_id=V - 1, device=DEV, dtype=torch.bfloat16)
    return _MODELS[(L, V, D)]


def make_decoder(B, L, V, D, H, graph):
    model = fixed_model(L, V, D)
    cfg = DecodeConfig(steps=10_000, reveal="topk", reveal_per_step=min(8, L // 4), history_steps=H, cuda_graph=graph)
    canvas = torch.full((B, L), V - 1, device=DEV)
    canvas[:, : L // 2] = torch.randint(0, V - 1, (B, L // 2), device=DEV)
    dec = FastDecoder(RMModel(model), build_canvas(canvas, V - 1, cfg), cfg, V - 1, seed=0)
    return model, canvas, dec


def sampler_ms(B, L, V, D, H, graph, iters):
    """Milliseconds per FastDecoder step (NaN when a graph is unavailable: the dry run)."""
    if graph and DEV != "cuda":
        return float("nan")
    with torch.no_grad():
        _, _, dec = make_decoder(B, L, V, D, H, graph)
        step = dec._graphed_step() if graph else dec.step
        return bench_ms(step, iters=iters, warmup=2, flush=False)


def generate_ms_per_step(B, L, V, D, H, impl, steps):
    """Milliseconds per step of ``generate`` (eager) with the fast path or the reference loop."""
    model, canvas, _ = make_decoder(B, L, V, D, H, False)
    cfg = DecodeConfig(steps=steps, reveal="topk", reveal_per_step=min(8, L // 4), history_steps=H, check_every=steps)
    run = lambda: generate(model, canvas, cfg, mask_id=V - 1, impl=impl)  # noqa: E731
    return bench_ms(run, iters=1, warmup=1, flush=False) / steps


def main():
    def extra(ap):
        ap.add_argument("--layers", type=int, default=None,
                        help=f"layers of the LLaDA-shaped model to time (scaled to {FULL_LAYERS}); default all")
    args = parse_args(__doc__, extra)
    torch.manual_seed(0)
    if DRY_RUN:
        B, L, V, D, H = 1, 8, 64, 32, 2  # the interpreter runs one program per row: keep rows few
        dims = dict(d=32, ffn=64, heads=4, vocab=V)
        layers, iters, gen_steps = args.layers or 2, 1, 1
    else:
        B, L, V, D, H = 8, 1024, 126464, 4096, 6
        dims = dict(d=4096, ffn=12288, heads=32, vocab=V)
        layers, iters, gen_steps = args.layers or FULL_LAYERS, 20, 4
    meta = device_info()
    meta.update(dtype="bfloat16", shape=f"B={B} L={L} V={V} D={D} H={H}; forward d={dims['d']} ffn={dims['ffn']} "
                                        f"heads={dims['heads']}, {layers} of {FULL_LAYERS} layers timed",
                timing="CUDA events under torch.no_grad(); eager and CUDA-graph replay reported separately; "
                       "shares and speed-ups are eager / eager or graph / graph")
    res = Results(args.out, "decode", meta, ["what", "mode", "ms", "share_of_forward", "speedup_vs_reference"])

    sampler = {}
    for graph in (False, True):
        for hist in ((H,) if DRY_RUN else (0, H)):
            ms = sampler_ms(B, L, V, D, hist, graph, iters)
            sampler[(graph, hist)] = ms
            if graph and DEV != "cuda":
                continue
            res.add({"what": f"sampler step, H={hist}", "mode": "graph" if graph else "eager", "ms": ms})
    if DEV != "cuda":
        res.note("dry run: no CUDA graphs on CPU (graph rows not measured)")
    if DEV == "cuda":
        torch.cuda.empty_cache()

    with torch.no_grad():
        t_fast = generate_ms_per_step(B, L, V, D, H, "fast", gen_steps)
        res.add({"what": f"generate, fast path, H={H}, per step", "mode": "eager", "ms": t_fast})
        t_ref = generate_ms_per_step(B, L, V, D, H, "reference", gen_steps)
        res.add({"what": f"generate, reference loop, H={H}, per step", "mode": "eager", "ms": t_ref,
                 "speedup_vs_reference": 1.0})
        res.rows[-2]["speedup_vs_reference"] = ratio(t_ref, t_fast)
        res.write()
    _MODELS.clear()
    if DEV == "cuda":
        torch.cuda.empty_cache()

    t = time.perf_counter()
    model = build_on_device(layers, dims)
    if DEV == "cuda":
        torch.cuda.synchronize()
    meta["model_build_s"] = round(time.perf_counter() - t, 2)
    ids = torch.randint(0, V, (B, L), device=DEV)
    scale = FULL_LAYERS / layers
    fwd = {}
    with torch.no_grad():
        fwd[False] = bench_ms(lambda: model(input_ids=ids), iters=3 if DEV == "cuda" else 1, warmup=1,
                              flush=False) * scale
        fwd[True] = try_bench_ms(lambda: model(input_ids=ids), res.notes, "forward", iters=3, warmup=1,
                                 flush=False, graph=True) * scale
    for graph in (False, True):
        if graph and DEV != "cuda":
            continue
        res.add({"what": f"LLaDA-8B-shaped forward ({layers} layers timed, scaled to {FULL_LAYERS})",
                 "mode": "graph" if graph else "eager", "ms": fwd[graph]})
    for r in res.rows:
        if r["what"].startswith("sampler"):
            r["share_of_forward"] = ratio(r["ms"], fwd[r["mode"] == "graph"])
        elif r["what"].startswith("generate"):
            r["share_of_forward"] = ratio(r["ms"], fwd[False])
    res.meta["model_build_s"] = meta["model_build_s"]
    res.note(f"model built on {DEV} in bf16 in {meta['model_build_s']} s ({sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters)")


if __name__ == "__main__":
    main()
