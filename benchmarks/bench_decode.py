"""Decoder overhead per step (model forward excluded): fast path vs reference loop, same run.

    python -m pytest benchmarks/bench_decode.py --benchmark-only

The model is a :class:`FixedLogitsModel` (its forward is a free broadcast view), so the time is
the sampler's own: statistics over the logits, reveal/re-mask decisions, history push and the HER
input embeddings. CPU shape from the decoder issue: B = 64, L = 256, V = 32000 (D = 512 for HER).
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _decode_common import FixedLogitsModel  # noqa: E402

from rmkernels import DecodeConfig, generate  # noqa: E402

B, L, V, D = 64, 256, 32000, 512
STEPS = 4


@pytest.fixture(scope="module")
def setup():
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = FixedLogitsModel(L, V, D, mask_id=V - 1, device=dev)
    canvas = torch.full((B, L), V - 1, device=dev)
    canvas[:, : L // 2] = torch.randint(0, V - 1, (B, L // 2))  # half visible (re-mask candidates), half masked
    return model, canvas


@pytest.mark.parametrize("history", [0, 6])
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_decoder_step(benchmark, setup, impl, history):
    model, canvas = setup
    cfg = DecodeConfig(steps=STEPS, reveal="topk", reveal_per_step=4, history_steps=history, check_every=STEPS)
    benchmark.group = f"decoder step, B={B} L={L} V={V} H={history}"
    rounds = 3 if impl == "fast" else 1

    def run():
        out = generate(model, canvas, cfg, mask_id=V - 1, impl=impl)
        assert int(out.steps.max()) == STEPS  # every step is a real step (no early fixed point)
        return out

    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
    benchmark.extra_info["ms_per_step"] = benchmark.stats["mean"] / STEPS * 1e3
