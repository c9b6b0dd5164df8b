"""RMSampler: the step-level sampler for other engines' loops (a toy loop equals generate; the
engine-hook example of docs/sampler.md runs; batch invariance; bad input; CUDA-graph capture)."""
import re
from pathlib import Path

import pytest
import torch
from test_decode_cache import M, make, norm, prompts

from rmkernels import DecodeConfig, generate
from rmkernels.decode import RMModel, RMSampler
from rmkernels.decode.canvas import build_canvas

pytestmark = pytest.mark.usefixtures("one_thread")
G = 12


def toy_loop(model, ids, am, cfg, hn, kernels="reference"):
    """A hand-written engine loop: the engine owns the blocks and the forward, the sampler the steps."""
    rm = RMModel(model, hn)
    canvas = build_canvas(ids, M, cfg, attention_mask=am, gen_length=G)
    x = canvas.tokens.clone()
    sampler = RMSampler(cfg, M, kernels=kernels)
    n_blocks, spb = int(canvas.n_blocks[0]), int(canvas.steps_per_block[0])
    state = None
    for k in range(n_blocks):
        editable = canvas.gen_mask & (canvas.gen_rank < (k + 1) * canvas.block_len)
        state = sampler.init(x, editable, steps=spb, state=state)
        for _ in range(spb):
            if cfg.history_steps:
                emb = sampler.input_embeds(rm.embedding_weight, hn, x, state, token_mask=canvas.gen_mask)
                logits = rm(inputs_embeds=emb, attention_mask=canvas.attention_mask)
            else:
                logits = rm(input_ids=x, attention_mask=canvas.attention_mask)
            x, done = sampler.step(logits, x, state)
            if bool(done.all()):
                break
    return x, state


@pytest.mark.parametrize("extra", [
    dict(history_steps=0),
    dict(history_steps=3, history_decay=0.2, temperature=0.7, seed=11),
    dict(reveal="threshold", reveal_threshold=0.4, rescue_ratio=0.3, history_steps=0, max_remask=2),
    dict(sampler="low_confidence", reveal_per_step=2, history_steps=2, suppress_tokens=(2, 5)),
    dict(sampler="confidence_remask", remask_threshold=0.3, history_steps=0, remask_interval=2),
])
def test_toy_loop_equals_generate(extra):
    model = make("llada", 3)
    ids, am = prompts(3)
    hn = norm(3)
    cfg = DecodeConfig(steps=12, block_size=4, **{"reveal_per_step": 1, **extra})
    x, state = toy_loop(model, ids, am, cfg, hn)
    out = generate(model, ids, cfg, mask_id=M, attention_mask=am, gen_length=G, history_norm=hn, kernels="reference")
    assert torch.equal(x, out.sequences)
    assert torch.equal(state.steps, out.steps)
    assert not bool(state.bad_logits)


def test_docs_engine_hook_example_runs_and_equals_generate():
    """The engine-hook example in docs/sampler.md (SGLang / dInfer shaped) as written there."""
    text = Path(__file__).resolve().parents[1].joinpath("docs", "sampler.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    code = next(b for b in blocks if "class RMBlockAlgorithm" in b)
    ns: dict = {}
    exec(compile(code, "docs/sampler.md", "exec"), ns)
    model = make("dream", 4)
    ids, am = prompts(4)
    cfg = DecodeConfig(steps=12, block_size=4, reveal_per_step=1, history_steps=0)
    rm = RMModel(model)  # a shifted model: the adapter returns per-position logits
    canvas = build_canvas(ids, M, cfg, attention_mask=am, gen_length=G)

    def forward(x):  # the "engine": its model runner
        am_rows = None if canvas.attention_mask is None else canvas.attention_mask[: x.shape[0]]
        return rm(input_ids=x, attention_mask=am_rows)

    algo = ns["RMBlockAlgorithm"](cfg, M, kernels="reference")  # eager statistics: fast under pytest
    x = canvas.tokens.clone()
    for k in range(3):
        block = canvas.gen_mask & (canvas.gen_rank >= 4 * k) & (canvas.gen_rank < 4 * (k + 1))
        x = algo.run_block(forward, x, block, steps=4)
    scoped = generate(model, ids, cfg, mask_id=M, attention_mask=am, gen_length=G, remask_scope="block",
                      kernels="reference")
    assert torch.equal(x, scoped.sequences)
    # dInfer-shaped: decode(logits, block_start, block_end, x) on a single row
    x1 = canvas.tokens[:1].clone()
    dec = ns["RMBlockDecoder"](cfg, M, kernels="reference")
    n0 = int(canvas.gen_mask[0].nonzero()[0])
    for k in range(3):
        s, e = n0 + 4 * k, n0 + 4 * (k + 1)
        dec.start_block(x1, s, e, steps=4)
        for _ in range(4):
            if dec.decode(forward(x1)[:, s:e], s, e, x1):
                break
    assert torch.equal(x1[0], scoped.sequences[0])


def test_sampler_batch_invariant_and_in_place():
    model = make("llada", 5)
    ids, am = prompts(5)
    cfg = DecodeConfig(steps=4, reveal_per_step=2, temperature=0.9, seed=1, history_steps=2)
    canvas = build_canvas(ids, M, cfg, attention_mask=am, gen_length=G)
    x = canvas.tokens.clone()
    logits = RMModel(model)(input_ids=x, attention_mask=canvas.attention_mask)
    sampler = RMSampler(cfg, M, kernels="reference")
    state = sampler.init(x, canvas.gen_mask)
    ptr = x.data_ptr()
    out, done = sampler.step(logits, x, state)
    assert out.data_ptr() == ptr and done is state.done
    for b in range(3):
        xb = canvas.tokens[b:b + 1].clone()
        sb = sampler.init(xb, canvas.gen_mask[b:b + 1])
        sampler.step(logits[b:b + 1], xb, sb)
        assert torch.equal(xb[0], out[b]), b
    assert int(state.steps.sum()) == 3 and bool((out != canvas.tokens).any())
    same = sampler.init(out, canvas.gen_mask, steps=2, state=state)  # continue: same storage
    assert same is state and int(state.steps.sum()) == 3 and int(state.budget[0]) == 2


def test_sampler_bad_input_rejected_by_name():
    x = torch.full((2, 6), M)
    ed = torch.ones(2, 6, dtype=torch.bool)
    with pytest.raises(ValueError, match="cfg_scale"):
        RMSampler(DecodeConfig(cfg_scale=1.0), M)
    with pytest.raises(ValueError, match="cache"):
        RMSampler(DecodeConfig(cache="dual"), M)
    with pytest.raises(ValueError, match="mask_id"):
        RMSampler(DecodeConfig(), None)
    with pytest.raises(ValueError, match="reveal"):
        RMSampler(DecodeConfig(), M, reveal="most")
    s = RMSampler(DecodeConfig(history_steps=0), M)
    with pytest.raises(ValueError, match="editable"):
        s.init(x, ed[:, :3])
    with pytest.raises(ValueError, match="editable"):
        s.init(x, ed.long())
    with pytest.raises(ValueError, match="steps"):
        s.init(x, ed, steps=0)
    with pytest.raises(ValueError, match="positions"):
        s.init(x, ed, positions=torch.arange(5))
    st = s.init(x, ed)
    with pytest.raises(ValueError, match="logits"):
        s.step(torch.zeros(2, 5, M + 1), x, st)
    with pytest.raises(ValueError, match="mask_id"):
        s.step(torch.zeros(2, 6, M), x, st)
    with pytest.raises(ValueError, match="history_steps"):
        s.input_embeds(torch.zeros(M + 1, 4), None, x, st)


@pytest.mark.cuda
def test_cuda_sampler_step_captured_in_a_graph():
    model = make("llada", 6).cuda()
    ids, am = prompts(6)
    cfg = DecodeConfig(steps=8, reveal_per_step=2, temperature=0.5, seed=2, history_steps=2, rescue_ratio=0.3)
    canvas = build_canvas(ids.cuda(), M, cfg, attention_mask=am.cuda(), gen_length=G)
    logits = RMModel(model)(input_ids=canvas.tokens, attention_mask=canvas.attention_mask).clone()
    sampler = RMSampler(cfg, M)
    x_eager = canvas.tokens.clone()
    s_eager = sampler.init(x_eager, canvas.gen_mask)
    x_graph = canvas.tokens.clone()
    s_graph = sampler.init(x_graph, canvas.gen_mask)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a copy of the state
        warm = sampler.init(x_graph.clone(), canvas.gen_mask)
        sampler.step(logits, x_graph.clone(), warm)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        sampler.step(logits, x_graph, s_graph)
    for _ in range(3):
        sampler.step(logits, x_eager, s_eager)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(x_eager, x_graph) and torch.equal(s_eager.steps, s_graph.steps)
