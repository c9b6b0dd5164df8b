"""KV cache in the decoder on CPU: tokens/s and forwarded tokens per generated token, none vs
prefix vs dual, each sampler, at two step budgets (ratios measured in the same run).

    PYTHONPATH=$PWD python3 benchmarks/bench_cache.py [--threads 1] [--steps 256 64] [--batch 1] [--json FILE]

Model: a tiny LLaDA (:class:`rmkernels.models.LLaDAModel`, 4 layers, d_model 256, 8 heads, SwiGLU
768, vocab 32000, random weights, fp32, SDPA attention). Batch: one prompt of 64 tokens
(``--batch 2``: prompts of 64 and 40 tokens, whose blocks start at different positions),
gen_length 256, block 32 (8 blocks), HER on (``history_steps=6``). ``steps=256`` reveals 1 token
per step, ``steps=64`` 4 per step (``reveal_per_step = 256 / steps``). Every configuration is
decoded once (warm-up decode first); the three cache modes of a (sampler, steps) pair run back to
back so machine load affects them alike. Goals (issue 18): prefix >= 2x, dual >= 3x tokens/s over none at equal steps.

"forwarded / generated" counts the positions the model's first layer computes (batch rows x
positions, summed over calls) per generated token: the work the cache saves.

On a shared machine wall-clock time depends on the other processes; the CPU time of this process
(``time.process_time``, all its threads) much less, so both are reported: ``tokens/s`` (wall) with
its ratio to ``none``, and tokens per CPU-second with its ratio (the steadier estimate; with one
thread the two agree on an idle machine).
"""
import argparse
import datetime
import json
import os
import platform
import time

import torch

from rmkernels import DecodeConfig, generate
from rmkernels.models import LLaDAConfig, LLaDAModel

SAMPLERS = ("rm", "low_confidence", "confidence_remask")
MODES = ("none", "prefix", "dual")


def tiny_llada(seed: int = 0) -> LLaDAModel:
    torch.manual_seed(seed)
    cfg = LLaDAConfig(d_model=256, n_heads=8, n_kv_heads=8, n_layers=4, mlp_hidden_size=768, vocab_size=32000,
                      embedding_size=32000, mask_token_id=31999, max_sequence_length=1024)
    return LLaDAModel(cfg, attn_impl="sdpa").eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, nargs="+", default=[256, 64])
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1, help="1: one 64-token prompt; 2: prompts of 64 and 40 tokens")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = tiny_llada()
    M = model.config.mask_token_id
    g = torch.Generator().manual_seed(0)
    P = 64
    B = args.batch
    prompt = torch.randint(0, M, (B, P), generator=g)
    am = torch.ones(B, P, dtype=torch.long)
    if B > 1:
        am[1:, : P - 40] = 0  # rows 1..: 40 tokens (left padded; the decoder left-aligns the rows' canvases)
    forwarded = [0]

    def count(mod, a):  # positions the first layer computes (rows x positions)
        forwarded[0] += a[0].shape[0] * a[0].shape[1]

    model.blocks[0].register_forward_pre_hook(count)
    n_tokens = B * args.gen_length
    load = os.getloadavg()[0]
    print(f"# bench_cache: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, load average {load:.1f}, {datetime.date.today()}", flush=True)
    print("| sampler | steps | cache | wall s | tokens/s | x none | CPU s | tokens/CPU-s | x none (CPU) "
          "| forwarded / generated | NFE |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    generate(model, prompt, DecodeConfig(steps=args.gen_length // args.block, block_size=args.block,
                                         reveal_per_step=args.block, cache="dual"),
             mask_id=M, attention_mask=am, gen_length=args.gen_length)  # warm-up
    for steps in args.steps:
        for sampler in SAMPLERS:
            base = base_cpu = None
            for mode in MODES:
                cfg = DecodeConfig(steps=steps, block_size=args.block, reveal_per_step=max(1, args.gen_length // steps),
                                   sampler=sampler, history_steps=6, cache=mode, check_every=8)
                forwarded[0] = 0
                t, c = time.perf_counter(), time.process_time()
                out = generate(model, prompt, cfg, mask_id=M, attention_mask=am, gen_length=args.gen_length)
                dt, dc = time.perf_counter() - t, time.process_time() - c
                tps, tpc = n_tokens / dt, n_tokens / dc
                if mode == "none":
                    base, base_cpu = tps, tpc
                row = {"sampler": sampler, "steps": steps, "cache": mode, "seconds": dt, "tokens_per_s": tps,
                       "speedup": tps / base, "cpu_seconds": dc, "tokens_per_cpu_s": tpc, "speedup_cpu": tpc / base_cpu,
                       "forwarded_per_token": forwarded[0] / n_tokens, "nfe": out.nfe,
                       "load": os.getloadavg()[0]}
                rows.append(row)
                print(f"| {sampler} | {steps} | {mode} | {dt:.1f} | {tps:.2f} | {tps / base:.2f} | {dc:.1f} | "
                      f"{tpc:.2f} | {tpc / base_cpu:.2f} | {forwarded[0] / n_tokens:.1f} | {out.nfe} |", flush=True)
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "load_start": load, "load_end": os.getloadavg()[0],
                       "date": datetime.date.today().isoformat(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
