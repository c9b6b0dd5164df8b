"""GPU benchmark of the decoder's own time per step beside a forward of an LLaDA-8B-shaped model.

    python benchmarks/gpu_decode.py --out DIR [--layers 32]

* sampler: FastDecoder.step with a free-forward model (B = 8, L = 1024, V = 126464, bf16, D = 4096,
  H = 6): rm_stats over [8192, 126464] logits, reveal / re-mask decisions, history push and the
  HER input embeddings; eager and CUDA-graph replay.
* forward: a bidirectional transformer of LLaDA-8B's shape (32 layers, d 4096, SwiGLU 12288,
  32 heads, V 126464) with random bf16 weights, on the same batch.
Target (decoder issue): sampler time per step < 5% of that forward.
"""
import argparse
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _decode_common import FixedLogitsModel  # noqa: E402
from _gpu_common import bench_ms, device_info, write_results  # noqa: E402

from rmkernels import DecodeConfig  # noqa: E402
from rmkernels.decode import RMModel  # noqa: E402
from rmkernels.decode.canvas import build_canvas  # noqa: E402
from rmkernels.decode.fast import FastDecoder  # noqa: E402


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


def sampler_ms(B, L, V, D, H, graph):
    model = FixedLogitsModel(L, V, D, mask_id=V - 1, device="cuda", dtype=torch.bfloat16)
    cfg = DecodeConfig(steps=10_000, reveal="topk", reveal_per_step=8, history_steps=H, cuda_graph=graph)
    canvas = torch.full((B, L), V - 1, device="cuda")
    canvas[:, : L // 2] = torch.randint(0, V - 1, (B, L // 2), device="cuda")
    c = build_canvas(canvas, V - 1, cfg)
    dec = FastDecoder(RMModel(model), c, cfg, V - 1, seed=0)
    step = dec._graphed_step() if graph else dec.step
    return bench_ms(step, iters=20, warmup=3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=32)
    args = ap.parse_args()
    B, L, V, D, H = 8, 1024, 126464, 4096, 6
    meta = device_info()
    rows = []
    for graph in (False, True):
        for hist in (0, H):
            rows.append({"what": f"sampler step (H={hist}, graph={graph})", "ms": sampler_ms(B, L, V, D, hist, graph)})
    torch.cuda.empty_cache()
    torch.manual_seed(0)
    model = LLaDAShaped(layers=args.layers).to(device="cuda", dtype=torch.bfloat16).eval()
    ids = torch.randint(0, V, (B, L), device="cuda")
    with torch.no_grad():
        fwd = bench_ms(lambda: model(input_ids=ids), iters=5, warmup=2) * 32 / args.layers
    rows.append({"what": f"LLaDA-8B-shaped forward ({args.layers} layers timed, scaled to 32)", "ms": fwd})
    for r in rows[:-1]:
        r["share_of_forward"] = r["ms"] / fwd
    meta["shape"] = f"B={B} L={L} V={V} D={D} bf16"
    write_results(args.out, "decode", meta, rows, ["what", "ms", "share_of_forward"])


if __name__ == "__main__":
    main()
