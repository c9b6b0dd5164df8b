"""GPU benchmark of the decoder's KV cache (docs/spec.md §8) on an LLaDA-8B-shaped model: tokens/s for
cache none / prefix / dual with flash-attn (when installed) and SDPA, and the share of a step
spent in the sampler + HER.

    python benchmarks/gpu_cache.py --out DIR [--dry-run] [--layers 8] [--batch 4] [--prompt 256]
                                   [--gen 256] [--block 32] [--steps 256]

* Model: :class:`rmkernels.models.LLaDAModel` with LLaDA-8B's shape (d_model 4096, 32 heads,
  SwiGLU 12288, vocab 126464), random bf16 weights created directly on the GPU (meta init, no host
  copy), ``--layers`` of its 32 layers (default 8). Batch ``B`` prompts of ``--prompt`` tokens,
  ``--gen`` generated, blocks of ``--block``, HER on (``history_steps=6``), the RM sampler.
* Steps, not a full decode: each kind of step the decode of ``--steps`` steps runs is timed with
  the real :class:`~rmkernels.decode.fast.FastDecoder` (eager, and as a CUDA-graph replay): the
  full-canvas step (``none``), the refresh (a full forward that refills the cache) and the span
  step of every block width (``prefix``: the block and everything after it; ``dual``: the block).
  A decode's time is composed from them (``n_blocks x (refresh + (steps_per_block - 1) x span)``).
* Scaling to 32 layers: the same step with the model's work replaced by stored outputs (the
  "sampler + HER" time: HER embeddings of the forwarded positions, ``rm_stats`` over their logits,
  the reveal / re-mask decision, history push, gathers / scatters) is measured too; the model part
  ``step - sampler`` is scaled by ``32 / layers``, the sampler part is not.
* Goals (issue 18): dual >= 5x tokens/s over none; sampler + HER < 3% of a (dual, graph) step.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
from _gpu_common import DEV, DRY_RUN, Results, bench_ms, copy_bandwidth_gbs, device_info, parse_args, ratio  # noqa: E402

from rmkernels import DecodeConfig, HistoryNorm  # noqa: E402
from rmkernels.decode import RMModel  # noqa: E402
from rmkernels.decode.canvas import build_canvas  # noqa: E402
from rmkernels.decode.fast import FastDecoder  # noqa: E402
from rmkernels.models import LLaDAConfig, LLaDAModel  # noqa: E402
from rmkernels.models._layers import flash_attn_available  # noqa: E402

FULL_LAYERS = 32


class StoredOutputs:
    """Stands in for the model inside a cached step: returns stored hidden states and logits, so
    the step's remaining time is the sampler's and HER's (everything else is the real code)."""

    def __init__(self, rm: RMModel, hidden: torch.Tensor, logits: torch.Tensor):
        self.history_norm, self.embedding_weight = rm.history_norm, rm.embedding_weight
        self.hidden, self.logits = hidden, logits

    def cached_hidden(self, input_ids=None, inputs_embeds=None, attention_mask=None, *, kv_cache, q_index=None):
        return self.hidden

    def logits_from_hidden(self, hidden):
        return self.logits


class StoredLogitsModel(torch.nn.Module):
    """The uncached step's stand-in: the real embedding table (HER runs), stored logits."""

    def __init__(self, embedding, logits):
        super().__init__()
        self.embedding, self.logits = embedding, logits

    def get_input_embeddings(self):
        return self.embedding

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None):
        return self.logits


def sampler_only(model, hn, canvas, cfg, M, kind, block, dtype):
    """A FastDecoder whose ``step(kind == "refresh")`` runs everything but the model."""
    B, L = canvas.tokens.shape
    V, D = model.config.vocab_size, model.config.d_model
    if kind == "full":
        logits = torch.randn(B, L, V, device=DEV, dtype=dtype) * 2
        return FastDecoder(RMModel(StoredLogitsModel(model.get_input_embeddings(), logits), hn), canvas, cfg, M, 0)
    dec = FastDecoder(RMModel(model, hn), canvas, cfg, M, seed=0)
    dec.cached.set_block(block)
    W, n_in = dec.cached.width(), dec.cached.n_in
    hidden = torch.zeros(n_in, L if kind == "refresh" else W, D, device=DEV, dtype=dtype)
    dec.cached.rm = StoredOutputs(dec.rm, hidden, torch.randn(n_in, W, V, device=DEV, dtype=dtype) * 2)
    return dec


def refresh_matches_uncached(model, hn, canvas, cfg, M) -> float:
    """Max |cached refresh logits - uncached logits| at the first block, relative to the logits' scale."""
    from rmkernels.decode.forward import decoder_logits

    dec = FastDecoder(RMModel(model, hn), canvas, cfg, M, seed=0)
    dec.cached.set_block(0)
    hist = (dec.history.ids, dec.history.lengths)
    got, pos = dec.cached.logits(dec.x, hist, True)
    full = decoder_logits(dec.rm, dec.x, canvas.attention_mask, canvas.gen_mask, hist, cfg, M)
    want = full.gather(1, pos[:, :, None].expand(-1, -1, full.shape[-1]))
    return float((got.float() - want.float()).abs().max() / want.float().abs().max())


def main():
    def extra(ap):
        ap.add_argument("--layers", type=int, default=None, help=f"layers timed (scaled to {FULL_LAYERS}); default 8")
        ap.add_argument("--batch", type=int, default=None)
        ap.add_argument("--prompt", type=int, default=None)
        ap.add_argument("--gen", type=int, default=None)
        ap.add_argument("--block", type=int, default=None)
        ap.add_argument("--steps", type=int, default=None, help="steps of the composed decode (default = gen)")
    args = parse_args(__doc__, extra)
    torch.manual_seed(0)
    if DRY_RUN:
        dims = dict(d_model=32, n_heads=4, n_kv_heads=4, mlp_hidden_size=64, vocab_size=64, embedding_size=64,
                    mask_token_id=63)
        layers, B, P, G, blk, iters = args.layers or 2, args.batch or 1, args.prompt or 4, args.gen or 8, \
            args.block or 4, 1
    else:
        dims = dict(d_model=4096, n_heads=32, n_kv_heads=32, mlp_hidden_size=12288, vocab_size=126464,
                    embedding_size=126464, mask_token_id=126336)
        layers, B, P, G, blk, iters = args.layers or 8, args.batch or 4, args.prompt or 256, args.gen or 256, \
            args.block or 32, 5
    S = args.steps or G
    n_blocks = G // blk
    spb = S // n_blocks
    M, V, D = dims["mask_token_id"], dims["vocab_size"], dims["d_model"]
    scale = FULL_LAYERS / layers
    impls = (["flash"] if DEV == "cuda" and flash_attn_available() else []) + ["sdpa"]

    meta = device_info()
    meta.update(dtype="bfloat16" if DEV == "cuda" else "float32",
                shape=f"B={B} prompt={P} gen={G} block={blk} steps={S} (={spb}/block) L={P + G} V={V} D={D} H=6; "
                      f"{layers} of {FULL_LAYERS} layers timed, model time scaled to {FULL_LAYERS}",
                copy_GBps=copy_bandwidth_gbs(), attn_impls=impls,
                timing="CUDA events (no L2 flush: steps are compute-bound), eager launches and CUDA-graph replays "
                       "reported separately; a decode = sum of its steps")
    res = Results(args.out, "cache", meta,
                  ["attn", "cache", "mode", "step", "ms", "sampler_ms", "sampler_share", "tokens_per_s",
                   "speedup_vs_none"])
    t = time.perf_counter()
    dtype = torch.bfloat16 if DEV == "cuda" else torch.float32
    model = LLaDAModel(LLaDAConfig(n_layers=layers, max_sequence_length=4096, **dims), device=DEV, dtype=dtype).eval()
    hn = HistoryNorm(D, device=DEV)
    res.note(f"model built on {DEV} in {time.perf_counter() - t:.1f} s "
             f"({sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters)")
    prompt = torch.randint(0, M, (B, P), device=DEV)
    modes = [False, True] if DEV == "cuda" else [False]
    ok = True

    def timed(dec, refresh, graph):
        fn = dec.stepper(refresh) if graph else (lambda: dec.step(refresh))
        return bench_ms(fn, iters=iters, warmup=1, flush=False)

    with torch.no_grad():
        for impl in impls:
            model.attn_impl = impl
            cfg = DecodeConfig(steps=S, block_size=blk, history_steps=6, cache="dual")
            err = refresh_matches_uncached(model, hn, build_canvas(prompt, M, cfg, gen_length=G), cfg, M)
            tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
            ok &= err <= tol
            res.note(f"{impl}: refresh logits vs uncached logits, max relative difference {err:.2e} "
                     f"({'ok' if err <= tol else 'FAILED'}, tolerance {tol})")
            decode_ms = {}
            for mode in ("none", "prefix", "dual"):
                cfg = DecodeConfig(steps=S, block_size=blk, reveal_per_step=max(1, G // S), history_steps=6,
                                   cache=mode, cuda_graph=DEV == "cuda", check_every=S)
                canvas = build_canvas(prompt, M, cfg, gen_length=G)
                for graph in modes:
                    dec = FastDecoder(RMModel(model, hn), canvas, cfg, M, seed=0)
                    # (kind, block) -> ms; the blocks whose span width differs
                    kinds = [("full", 0)] if mode == "none" else (
                        [("refresh", 0)] + [("span", k) for k in (range(n_blocks) if mode == "prefix" else [0])])
                    total = 0.0
                    for kind, k in kinds:
                        if dec.cached is not None:
                            dec.cached.set_block(k)
                        ms = timed(dec, kind == "refresh", graph)
                        free = sampler_only(model, hn, canvas, cfg, M, kind, k, dtype)
                        sms = timed(free, kind == "refresh", graph)
                        ms32 = sms + (ms - sms) * scale
                        count = S if kind == "full" else (n_blocks if kind == "refresh" else
                                                          (spb - 1) * (1 if mode == "prefix" else n_blocks))
                        total += count * ms32
                        where = "" if kind != "span" or mode == "dual" else f", block {k}"
                        width = "all" if kind in ("full", "refresh") else str(dec.cached.width())
                        res.add({"attn": impl, "cache": mode, "mode": "graph" if graph else "eager",
                                 "step": f"{kind} x{count} ({width} positions{where})",
                                 "ms": ms32, "sampler_ms": sms, "sampler_share": ratio(sms, ms32)})
                        del free
                    decode_ms[(mode, graph)] = total
                    tps = B * G / (total * 1e-3)
                    res.add({"attn": impl, "cache": mode, "mode": "graph" if graph else "eager",
                             "step": f"decode of {S} steps (composed)", "ms": total, "tokens_per_s": tps,
                             "speedup_vs_none": ratio(decode_ms[("none", graph)], total)})
                    del dec
                    if DEV == "cuda":
                        torch.cuda.empty_cache()
            for graph in modes:
                sp = ratio(decode_ms[("none", graph)], decode_ms[("dual", graph)])
                res.note(f"{impl}, {'graph' if graph else 'eager'}: dual {sp:.2f}x over none "
                         f"(goal >= 5x: {'met' if sp >= 5 else 'NOT met'}); prefix "
                         f"{ratio(decode_ms[('none', graph)], decode_ms[('prefix', graph)]):.2f}x")
    if DRY_RUN:
        res.note("dry run: tiny shapes on CPU (plumbing only, not a measurement)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
