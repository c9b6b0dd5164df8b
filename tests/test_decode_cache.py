"""KV cache in the decoder (docs/spec.md §8): refresh logits, fast path == reference of the same schedule,
refresh-every-step == uncached, batch invariance, spans forwarded, remask_scope, bad config."""
import math

import pytest
import torch

from rmkernels import DecodeConfig, HistoryNorm, generate
from rmkernels.decode import RMModel, replay_statistics
from rmkernels.decode.canvas import build_canvas
from rmkernels.decode.fast import FastDecoder
from rmkernels.decode.forward import decoder_logits
from rmkernels.models import DreamConfig, DreamModel, LLaDAConfig, LLaDAModel, TinyMDM, TinyMDMConfig

V, M = 40, 39
pytestmark = pytest.mark.usefixtures("one_thread")


class _Competitive:
    """The mask logit competes with the best token (``max(z[:M]) + k sin(40 (z0 - z1))``), so masked
    positions abstain and visible tokens are re-masked often: every branch of the step runs."""

    k, offset = 3.0, 0.0

    def logits_from_hidden(self, hidden):
        z = super().logits_from_hidden(hidden)
        mask_logit = z[..., :M].max(-1).values + self.offset + self.k * torch.sin(40.0 * (z[..., 0] - z[..., 1]))
        return torch.cat([z[..., :M], mask_logit[..., None], z[..., M + 1:]], -1)


class CompLLaDA(_Competitive, LLaDAModel):
    pass


class CompDream(_Competitive, DreamModel):
    pass


def make(family: str, seed: int = 0, n_layers: int = 2):
    if family == "llada":
        model = CompLLaDA(LLaDAConfig(d_model=32, n_heads=4, n_kv_heads=2, n_layers=n_layers, mlp_hidden_size=48,
                                      vocab_size=V, embedding_size=48, rope_theta=1000.0, mask_token_id=M,
                                      max_sequence_length=64), attn_impl="sdpa")
    else:
        model = CompDream(DreamConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=n_layers,
                                      num_attention_heads=4, num_key_value_heads=2, rope_theta=1000.0, vocab_size=V,
                                      mask_token_id=M, max_position_embeddings=64), attn_impl="sdpa")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                scale = 3.0 if ("wte" in name or "embed" in name) else 1.0
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]) * scale)
    return model.eval()


def norm(seed: int) -> HistoryNorm:
    g = torch.Generator().manual_seed(seed)
    n = HistoryNorm(32)
    with torch.no_grad():
        n.weight.copy_(torch.rand(32, generator=g) * 0.5)
        n.bias.copy_(torch.randn(32, generator=g) * 0.1)
    return n


def prompts(seed: int, B: int = 3, P: int = 6, empty_row: bool = False):
    """Left-padded prompts of different lengths (row 0 full; optionally a row with no prompt at all)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, M, (B, P), generator=g)
    n = torch.randint(1, P, (B,), generator=g)
    n[0] = P
    if empty_row:
        n[-1] = 0
    am = (torch.arange(P)[None, :] >= P - n[:, None]).long()
    return ids, am


def same(a, b):
    assert torch.equal(a.sequences, b.sequences), (a.sequences, b.sequences)
    assert torch.equal(a.steps, b.steps), (a.steps, b.steps)
    if a.trajectory is not None:
        assert torch.equal(a.trajectory, b.trajectory)


KW = dict(mask_id=M, gen_length=12, kernels="reference")


# --- the refresh step --------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_refresh_step_gives_the_uncached_logits(family, mode):
    """A refresh is a full forward: its logits at the span equal the uncached ones (fp32 tolerance),
    with HER and guidance; a span step against the fresh cache too; a stale one does not."""
    model = make(family, 1)
    rm = RMModel(model, norm(1))
    ids, am = prompts(1, empty_row=family == "dream")
    cfg = DecodeConfig(steps=12, block_size=4, history_steps=3, cfg_scale=1.5, cache=mode)
    canvas = build_canvas(ids, M, cfg, attention_mask=am, gen_length=12)
    dec = FastDecoder(rm, canvas, cfg, M, seed=0, kernels="reference")
    g = torch.Generator().manual_seed(5)
    for _ in range(3):  # a mid-decode canvas with a history: some generated positions revealed
        prev = dec.x.clone()
        reveal = canvas.gen_mask & (torch.rand(dec.x.shape, generator=g) < 0.3)
        dec.x[reveal] = torch.randint(0, M, (int(reveal.sum()),), generator=g)
        dec.history.push(prev, torch.ones(3, dtype=torch.bool))
    hist = (dec.history.ids, dec.history.lengths)
    full = decoder_logits(rm, dec.x, canvas.attention_mask, canvas.gen_mask, hist, cfg, M, kernels="reference")
    for block in (0, 1, 2):
        dec.cached.set_block(block)
        logits, pos = dec.cached.logits(dec.x, hist, refresh=True)
        W = 4 if mode == "dual" else 12 - 4 * block
        assert pos.shape == (3, W) and torch.equal(pos[:, 0], dec.plan.starts + 4 * block)
        want = full.gather(1, pos[:, :, None].expand(-1, -1, V))
        torch.testing.assert_close(logits, want, atol=1e-5, rtol=1e-5)
        span, _ = dec.cached.logits(dec.x, hist, refresh=False)  # the cache is as fresh as the canvas
        torch.testing.assert_close(span, want, atol=1e-5, rtol=1e-5)
    x2 = dec.x.clone()  # change the active block (block 2): the span is fresh, the rest is cached
    x2[canvas.gen_mask & (canvas.gen_rank >= 8)] = 1
    stale, _ = dec.cached.logits(x2, hist, refresh=False)
    fresh = decoder_logits(rm, x2, canvas.attention_mask, canvas.gen_mask, hist, cfg, M, kernels="reference")
    assert (stale - fresh.gather(1, pos[:, :, None].expand(-1, -1, V))).abs().max() > 1e-3


# --- fast path == reference of the same schedule ------------------------------------------------------
CASES = [
    dict(reveal_per_step=1, history_steps=0),
    dict(reveal_per_step=2, history_steps=3, history_decay=0.3, cfg_scale=1.0),
    dict(reveal="threshold", reveal_threshold=0.3, history_steps=2, cache_refresh=2, max_remask=2),
    dict(reveal_per_step=2, temperature=0.8, seed=7, history_steps=2, history_rotate=False),
    dict(reveal_per_step=2, sampler="low_confidence", history_steps=0, suppress_tokens=(3,)),
    dict(reveal_per_step=1, sampler="confidence_remask", remask_threshold=0.3, history_steps=2, cache_refresh=3),
    dict(reveal="all", rescue_ratio=0.3, max_remask=3, history_steps=0, allow_mask_candidate=False),
    dict(reveal_per_step=2, fused_head=True, history_steps=2, cfg_scale=0.5, cache_refresh=3),  # docs/spec.md §9
]


@pytest.mark.parametrize("family,mode,case", [
    (f, m, c) for c in range(len(CASES)) for f, m in
    ((("llada", "prefix"), ("dream", "dual")) if c % 2 else (("llada", "dual"), ("dream", "prefix")))])
def test_cached_fast_equals_reference(family, mode, case):
    """Prompts of different lengths (Dream: also a row without a prompt), every sampler, HER, CFG,
    sampling, thresholds, refresh intervals and the stuck rescue: token for token and step for step."""
    model = make(family, 10 + case)
    ids, am = prompts(10 + case, empty_row=family == "dream")
    cfg = DecodeConfig(steps=12, block_size=4, cache=mode, record_trajectory=True, **CASES[case])
    kw = dict(attention_mask=am, history_norm=norm(case), **KW)
    ref = generate(model, ids, cfg, impl="reference", **kw)
    fast = generate(model, ids, cfg, check_every=2, **kw)
    same(ref, fast)
    assert fast.nfe >= int(fast.steps.max())


def test_cached_grid_is_meaningful():
    """The cached decodes above reveal and re-mask, and the cache changes the result (approximation)."""
    model = make("llada", 10)
    ids, am = prompts(10)
    cfg = DecodeConfig(steps=12, block_size=4, reveal_per_step=1, history_steps=0, record_trajectory=True)
    dual = generate(model, ids, cfg, attention_mask=am, cache="dual", **KW)
    stats = replay_statistics(dual.trajectory, M)
    assert int(stats.reveals.sum()) > 0 and int(stats.remasks.sum()) > 0
    block = generate(model, ids, cfg, attention_mask=am, remask_scope="block", **KW)
    assert not torch.equal(dual.sequences, block.sequences)  # stale keys outside the block matter


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_refresh_every_step_equals_uncached(family, mode):
    """cache_refresh=1: every step is a full forward, so the decode is the uncached one (same scope)."""
    model = make(family, 20)
    ids, am = prompts(20)
    for extra in (dict(history_steps=2), dict(sampler="low_confidence", cfg_scale=0.5, history_steps=0)):
        cfg = DecodeConfig(steps=12, block_size=4, reveal_per_step=1, remask_scope="block", **extra)
        kw = dict(attention_mask=am, history_norm=norm(20), **KW)
        plain = generate(model, ids, cfg, **kw)
        cached = generate(model, ids, cfg, cache=mode, cache_refresh=1, **kw)
        same(plain, cached)


def test_remask_scope_block_without_cache():
    """remask_scope='block' without a cache: fast == reference, never an edit outside the active
    block, and (on this model) a different result from the default scope."""
    model = make("llada", 30)
    ids, am = prompts(30)
    cfg = DecodeConfig(steps=12, block_size=4, reveal_per_step=1, history_steps=2, record_trajectory=True)
    kw = dict(attention_mask=am, history_norm=norm(30), **KW)
    ref = generate(model, ids, cfg, remask_scope="block", impl="reference", **kw)
    fast = generate(model, ids, cfg, remask_scope="block", **kw)
    same(ref, fast)
    canvas = build_canvas(ids, M, cfg, attention_mask=am, gen_length=12)
    rank = canvas.gen_rank
    for b in range(3):  # the blocks are edited in order: once block k changes, blocks < k never do again
        changes = [(fast.trajectory[t + 1, b] != fast.trajectory[t, b]) for t in range(fast.trajectory.shape[0] - 1)]
        lowest_block = 0
        for ch in changes:
            if bool(ch.any()):
                blocks = torch.div(rank[b][ch], 4, rounding_mode="floor")
                assert int(blocks.min()) >= lowest_block and int(blocks.max()) == int(blocks.min())
                lowest_block = int(blocks.min())
    default = generate(model, ids, cfg, **kw)
    assert not torch.equal(default.sequences, fast.sequences)


@pytest.mark.parametrize("family,mode", [("llada", "prefix"), ("dream", "dual")])
def test_cached_batch_invariance(family, mode):
    """Prompts of different lengths decoded together equal each decoded alone (rows' blocks start at
    different positions; each keeps its own positions and padding)."""
    model = make(family, 40)
    g = torch.Generator().manual_seed(40)
    rows = [torch.randint(0, M, (int(n),), generator=g) for n in (5, 1, 3, 6)]
    P = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), P, dtype=torch.long)
    am = torch.zeros(len(rows), P, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, P - len(r):] = r
        am[b, P - len(r):] = 1
    cfg = DecodeConfig(steps=12, block_size=4, reveal_per_step=1, history_steps=2, temperature=0.5, seed=3, cache=mode)
    kw = dict(history_norm=norm(40), **KW)
    batch = generate(model, ids, cfg, attention_mask=am, **kw)
    for b, r in enumerate(rows):
        alone = generate(model, r[None], cfg, **kw)
        assert torch.equal(batch.generated(b), alone.generated(0)), b
        assert batch.steps[b] == alone.steps[0]


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_cache_forwards_only_the_span(family):
    """Positions each model call computes: the whole canvas at a refresh, then the span (the block
    for dual, the block and the rest of the generation for prefix; Dream one more)."""
    model = make(family, 50)
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    ids = torch.randint(0, M, (2, 5), generator=torch.Generator().manual_seed(50))
    shift = 1 if family == "dream" else 0
    for mode, refresh, want in (
        ("dual", None, [17, 4, 4, 4] * 3),
        ("prefix", None, [17, 12, 12, 12, 17, 8, 8, 8, 17, 4, 4, 4]),
        ("dual", 2, [17, 4] * 6),
    ):
        seen.clear()
        cfg = DecodeConfig(steps=12, block_size=4, reveal_per_step=1, remask=False, allow_mask_candidate=False,
                           history_steps=0, cache=mode, cache_refresh=refresh)
        out = generate(model, ids, cfg, **KW)
        assert seen == [w if w == 17 else w + shift for w in want], (mode, seen)
        assert out.nfe == 12 and not bool((out.sequences == M).any())


def test_cache_bad_config_rejected_by_name():
    with pytest.raises(ValueError, match="cache"):
        DecodeConfig(cache="full")
    with pytest.raises(ValueError, match="cache_refresh"):
        DecodeConfig(cache="dual", cache_refresh=0)
    with pytest.raises(ValueError, match="cache_refresh"):
        DecodeConfig(cache_refresh=1.5)
    with pytest.raises(ValueError, match="remask_scope"):
        DecodeConfig(remask_scope="rows")
    with pytest.raises(ValueError, match="remask_scope"):
        DecodeConfig(cache="prefix", remask_scope="all")
    assert DecodeConfig(cache="dual").edit_scope == "block" and DecodeConfig().edit_scope == "all"
    assert DecodeConfig(remask_scope="block").edit_scope == "block"
    ids = torch.randint(0, M, (2, 5))
    tiny = TinyMDM(TinyMDMConfig(vocab_size=V, max_len=32, dim=16, depth=1, heads=2)).eval()
    with pytest.raises(ValueError, match="cache='dual' needs a model with the KV-cache API"):
        generate(tiny, ids, DecodeConfig(steps=4, cache="dual"), **KW)
    model = make("llada", 60)
    fixed = torch.zeros(2, 12, dtype=torch.bool)
    fixed[:, ::3] = True  # generated positions interleaved with fixed ones: no contiguous span
    canvas = torch.randint(0, M, (2, 12))
    with pytest.raises(ValueError, match="cache='prefix' needs every row's generated positions to be one"):
        generate(model, canvas, DecodeConfig(steps=4, cache="prefix"), mask_id=M, prompt_mask=fixed)
    fixed = torch.zeros(2, 12, dtype=torch.bool)
    fixed[0, :3] = True
    with pytest.raises(ValueError, match="same number of generated positions"):
        generate(model, canvas, DecodeConfig(steps=4, cache="dual"), mask_id=M, prompt_mask=fixed)
    with pytest.raises(ValueError, match="cache="):  # the reference loop checks the same
        generate(tiny, ids, DecodeConfig(steps=4, cache="prefix"), impl="reference", **KW)


@pytest.mark.cuda
@pytest.mark.parametrize("family", ["llada", "dream"])
def test_cuda_cached_decode_graph_equals_eager_and_reference(family):
    """On a GPU: CUDA-graph replay (a graph for the refresh and one per span width) == eager ==
    the reference loop, with the Triton kernels, prefix and dual."""
    model = make(family, 70).cuda()
    ids, am = prompts(70)
    ids, am = ids.cuda(), am.cuda()
    for mode in ("prefix", "dual"):
        cfg = DecodeConfig(steps=12, block_size=4, reveal_per_step=2, history_steps=3, cache=mode, cache_refresh=2,
                           record_trajectory=True)
        kw = dict(attention_mask=am, history_norm=norm(70).cuda(), mask_id=M, gen_length=12)
        ref = generate(model, ids, cfg, impl="reference", **kw)
        eager = generate(model, ids, cfg, **kw)
        graph = generate(model, ids, cfg, cuda_graph=True, **kw)
        same(ref, eager)
        same(eager, graph)


# --- the model's per-row span (q_index) ---------------------------------------------------------
@pytest.mark.parametrize("update", [False, True])
def test_q_index_rows_equal_per_row_q_span(update):
    """A forward of per-row positions equals, row by row, the contiguous q_span forward of that row
    alone against its own cache (bitwise here); cache_update scatters exactly those positions."""
    model = make("llada", 80)
    x = torch.randint(0, M, (3, 14), generator=torch.Generator().manual_seed(80))
    am = torch.ones(3, 14, dtype=torch.bool)
    am[1, 11:] = False
    cache = model.allocate_kv_cache(3, 14)
    model(x, attention_mask=am, kv_cache=cache, cache_update=True)
    before = cache.clone()
    starts = torch.tensor([2, 5, 7])
    idx = starts[:, None] + torch.arange(4)
    x2 = x.clone()
    x2[:, 8] = 3  # inside some rows' spans, outside others'
    out = model(x2, attention_mask=am, kv_cache=cache, q_index=idx, cache_update=update).logits
    span_in = model(x2.gather(1, idx), attention_mask=am, kv_cache=before.clone(), q_index=idx).logits
    assert torch.equal(out, span_in)  # full-length inputs are gathered
    for b in range(3):
        s = int(starts[b])
        row_cache = type(cache)([k[b:b + 1] for k in before.keys], [v[b:b + 1] for v in before.values])
        alone = model(x2[b:b + 1], attention_mask=am[b:b + 1], kv_cache=row_cache, q_span=(s, s + 4)).logits
        torch.testing.assert_close(out[b], alone[0], atol=1e-6, rtol=1e-6)
    for new, old in zip(cache.keys, before.keys):
        written = torch.zeros(3, 14, dtype=torch.bool).scatter_(1, idx, True)
        assert torch.equal(new[~written[:, None, :].expand(-1, 2, -1)], old[~written[:, None, :].expand(-1, 2, -1)])
        assert update == (not torch.equal(new, old))
    with pytest.raises(ValueError, match="q_index"):
        model(x2, attention_mask=am, kv_cache=cache, q_index=idx.int())
    with pytest.raises(ValueError, match="not both"):
        model(x2, attention_mask=am, kv_cache=cache, q_index=idx, q_span=(0, 4))
    with pytest.raises(ValueError, match="filled kv_cache"):
        model(x2, attention_mask=am, kv_cache=type(cache)(), q_index=idx)
