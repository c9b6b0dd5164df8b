"""The RM decoder: fast path vs the reference loop, batch invariance, fixed points, caps, bad input."""
import pytest
import torch

from rmkernels import DecodeConfig, HistoryNorm, generate
from rmkernels.decode import RMModel, replay_statistics
from oracles import her_embed_by_hand
from rmkernels.decode.canvas import build_canvas
from rmkernels.decode.fast import FastDecoder
from rmkernels.decode.forward import decoder_logits
from rmkernels.models import TinyMDM, TinyMDMConfig

V, M = 23, 22


pytestmark = pytest.mark.usefixtures("one_thread")


class MaskCompetitive(torch.nn.Module):
    """A tiny random MDM whose mask logit competes with its best token: ``z[M] = max(z[:M]) +
    k * sin(40 (z[0] - z[1]))``, so masked positions abstain about half the time and visible tokens are
    re-masked often enough to exercise every branch of the step."""

    def __init__(self, seed: int, k: float = 3.0):
        super().__init__()
        torch.manual_seed(seed)
        self.inner = TinyMDM(TinyMDMConfig(vocab_size=V, max_len=48, dim=32, depth=2, heads=2))
        with torch.no_grad():  # distinct positions, so masked positions do not all decide alike
            self.inner.pos.normal_(0.0, 1.0)
        self.k = k

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None):
        z = self.inner(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        mask_logit = z[..., :M].max(-1).values + self.k * torch.sin(40.0 * (z[..., 0] - z[..., 1]))
        return torch.cat([z[..., :M], mask_logit[..., None], z[..., M + 1:]], -1)


def tiny_model(seed: int, k: float = 3.0) -> MaskCompetitive:
    return MaskCompetitive(seed, k).eval()


def random_norm(dim: int, seed: int) -> HistoryNorm:
    g = torch.Generator().manual_seed(seed)
    norm = HistoryNorm(dim)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(dim, generator=g) * 0.5)
        norm.bias.copy_(torch.randn(dim, generator=g) * 0.1)
    return norm


def prompts_batch(seed: int, B: int = 4, P: int = 7):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, M, (B, P), generator=g)
    lengths = torch.randint(1, P + 1, (B,), generator=g)
    lengths[0] = P
    am = (torch.arange(P)[None, :] >= P - lengths[:, None]).long()  # left padding, varied lengths
    return ids, am


def assert_same_decode(a, b):
    assert torch.equal(a.sequences, b.sequences), (a.sequences, b.sequences)
    assert torch.equal(a.steps, b.steps), (a.steps, b.steps)
    if a.trajectory is not None:
        assert torch.equal(a.trajectory, b.trajectory)


GRID = [
    dict(reveal="topk", reveal_per_step=2, block_size=4, steps=16),
    dict(reveal="topk", reveal_per_step=1, block_size=None, steps=12, remask=False),
    dict(reveal="threshold", reveal_threshold=0.3, block_size=8, steps=8, max_remask=1),
    dict(reveal="all", steps=10, max_remask=2, remask_interval=2),
    dict(reveal="topk", reveal_per_step=3, block_size=4, steps=8, allow_mask_candidate=False),
    dict(reveal="topk", reveal_per_step=2, steps=12, temperature=0.8, seed=1234),
    dict(reveal="all", steps=8, temperature=1.5, seed=99, max_remask=3, block_size=4),
    dict(reveal="topk", reveal_per_step=2, steps=8, cfg_scale=1.5, suppress_tokens=(0, 5)),
    dict(reveal="topk", reveal_per_step=2, steps=12, sampler="low_confidence"),
    dict(reveal="topk", reveal_per_step=2, steps=12, sampler="confidence_remask", remask_threshold=0.2, max_remask=2),
    dict(reveal="threshold", reveal_threshold=0.95, steps=8, fill_remaining=True),
    dict(reveal="all", steps=14, rescue_ratio=0.2, max_rescues=2, max_remask=3),
    dict(reveal="topk", reveal_per_step=2, block_size=4, steps=16, rescue_ratio=0.1),
]
HISTORY = [
    dict(history_steps=0),
    dict(history_steps=3, history_decay=0.0, history_rotate=True),
    dict(history_steps=6, history_decay=0.5, history_rotate=True),
    dict(history_steps=2, history_decay=0.3, history_rotate=False),
]


# every grid case with one history setting (cycling), plus every history setting on two cases
PAIRS = sorted({(c, c % len(HISTORY)) for c in range(len(GRID))} | {(c, h) for c in (0, 6) for h in range(len(HISTORY))})


@pytest.mark.parametrize("case,hist", PAIRS)
def test_fast_equals_reference_prompts(case, hist):
    seed = 1000 * case + hist
    model = tiny_model(seed)
    norm = random_norm(32, seed)
    ids, am = prompts_batch(seed)
    cfg = DecodeConfig(**GRID[case], **HISTORY[hist], record_trajectory=True)
    ref = generate(model, ids, cfg, mask_id=M, attention_mask=am, gen_length=8, history_norm=norm, impl="reference")
    fast = generate(model, ids, cfg, mask_id=M, attention_mask=am, gen_length=8, history_norm=norm, impl="fast",
                    check_every=3)
    assert_same_decode(ref, fast)
    assert fast.nfe >= int(fast.steps.max())


def test_grid_exercises_reveal_abstain_and_remask():
    """The comparisons above are meaningful: decoding both reveals and re-masks, and some position abstains."""
    model = tiny_model(0)
    ids, am = prompts_batch(0)
    cfg = DecodeConfig(steps=16, reveal_per_step=2, block_size=4, history_steps=0, record_trajectory=True)
    gen = build_canvas(ids, M, cfg, attention_mask=am, gen_length=8).gen_mask  # the layout generate uses
    abstained = []

    def watching(input_ids=None, inputs_embeds=None, attention_mask=None):
        z = model(input_ids=input_ids, attention_mask=attention_mask)
        # a masked generated position whose argmax is the mask itself abstains this step
        abstained.append(int((gen & (input_ids == M) & (z.argmax(-1) == M)).sum()))
        return z

    out = generate(watching, ids, cfg, mask_id=M, attention_mask=am, gen_length=8)
    stats = replay_statistics(out.trajectory, M)
    assert int(stats.reveals.sum()) > 0 and int(stats.remasks.sum()) > 0
    assert sum(abstained) > 0, abstained
    # the kernel path (C++ on CPU) agrees with the reference statistics too
    ref = generate(model, ids, DecodeConfig(steps=16, reveal_per_step=2, block_size=4, history_steps=0),
                   mask_id=M, attention_mask=am, gen_length=8, impl="reference")
    assert torch.equal(ref.sequences, out.sequences)


def test_build_canvas_by_hand():
    """Prompts left-aligned, masks after them, padding on the right; ranks, blocks and step budgets."""
    ids = torch.tensor([[5, 6, 7], [0, 8, 9], [0, 0, 4]])
    am = torch.tensor([[1, 1, 1], [0, 1, 1], [0, 0, 1]])
    c = build_canvas(ids, M, DecodeConfig(steps=8, block_size=2), attention_mask=am, gen_length=4, pad_id=1)
    assert c.tokens.tolist() == [[5, 6, 7, M, M, M, M], [8, 9, M, M, M, M, 1], [4, M, M, M, M, 1, 1]]
    assert c.gen_mask.int().tolist() == [[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 0, 0]]
    assert c.attention_mask.int().tolist() == [[1] * 7, [1] * 6 + [0], [1] * 5 + [0, 0]]
    assert c.gen_rank.tolist() == [[-1, -1, -1, 0, 1, 2, 3], [-1, -1, 0, 1, 2, 3, -1], [-1, 0, 1, 2, 3, -1, -1]]
    assert c.n_blocks.tolist() == [2, 2, 2] and c.block_len == 2 and c.steps_per_block.tolist() == [4, 4, 4]
    # no padding anywhere: no attention mask; the default pad is the mask id; one block without block_size
    c = build_canvas(ids[:1], M, DecodeConfig(steps=6), gen_length=2)
    assert c.tokens.tolist() == [[5, 6, 7, M, M]] and c.attention_mask is None
    assert c.n_blocks.tolist() == [1] and c.block_len == 2 and c.steps_per_block.tolist() == [6]
    # a ready canvas: fixed positions by prompt_mask, padding by attention_mask; a row with nothing to edit
    canvas = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 10]])
    fixed = torch.tensor([[True, False, False, True], [True, True, True, False]])
    c = build_canvas(canvas, M, DecodeConfig(steps=4), prompt_mask=fixed,
                     attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]))
    assert torch.equal(c.tokens, canvas) and c.gen_mask.int().tolist() == [[0, 1, 1, 0], [0, 0, 0, 0]]
    assert c.gen_rank.tolist() == [[-1, 0, 1, -1], [-1, -1, -1, -1]]
    assert c.n_blocks.tolist() == [1, 0] and c.block_len == 2 and c.steps_per_block.tolist() == [4, 0]


class MixingModel(torch.nn.Module):
    """``logits_i = e_i A + mean_j(e_j) C`` over the attended positions: every position sees the
    whole canvas, so masking the prompt (guidance) changes every logit."""

    def __init__(self, D=6):
        super().__init__()
        self.emb = torch.nn.Embedding(V, D)
        self.A, self.C = torch.nn.Parameter(torch.randn(D, V)), torch.nn.Parameter(torch.randn(D, V))

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None):
        e = self.emb(input_ids) if inputs_embeds is None else inputs_embeds
        m = torch.ones(e.shape[:2]) if attention_mask is None else attention_mask.to(e.dtype)
        ctx = (e * m[..., None]).sum(1) / m.sum(1, keepdim=True)
        return e @ self.A + (ctx @ self.C)[:, None, :]


@pytest.mark.parametrize("her", [False, True])
@pytest.mark.parametrize("kernels", ["reference", "auto"])
def test_decoder_logits_by_hand(her, kernels):
    """Guidance, suppression and History Reference of a decoding step, against hand-built inputs:
    the unconditional pass sees the prompt (attended, not generated) masked and the same history,
    logits = uncond + (scale + 1) (cond - uncond), suppressed ids -inf."""
    model, norm = MixingModel(), random_norm(6, 1)
    x = torch.tensor([[1, 2, M, 4, M, 0], [3, M, 5, 6, 7, M]])
    gen = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 0]], dtype=torch.bool)
    att = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    hist = (torch.randint(0, V, (2, 3, 6)), torch.tensor([2, 3])) if her else None
    cfg = DecodeConfig(cfg_scale=0.7, suppress_tokens=(0, 5), history_steps=3 if her else 0, history_decay=0.4)
    got = decoder_logits(RMModel(model, norm), x, att, gen, hist, cfg, M, kernels=kernels)

    prompt = att & ~gen
    x_uncond = x.clone()
    x_uncond[prompt] = M  # row 0: positions 0, 1; row 1: positions 0, 5 (padding, position 5 of row 0, stays)
    assert x_uncond.tolist() == [[M, M, M, 4, M, 0], [M, M, 5, 6, 7, M]]
    with torch.no_grad():
        if her:
            embed = lambda ids: her_embed_by_hand(model.emb.weight, ids, *hist, gen, decay=0.4, rotate=True,  # noqa: E731
                                                  ln_weight=norm.weight, ln_bias=norm.bias).float()
            cond, uncond = model(inputs_embeds=embed(x), attention_mask=att), model(inputs_embeds=embed(x_uncond), attention_mask=att)
        else:
            cond, uncond = model(input_ids=x, attention_mask=att), model(input_ids=x_uncond, attention_mask=att)
    want = uncond + 1.7 * (cond - uncond)
    want[..., [0, 5]] = float("-inf")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(cond, uncond, atol=1e-3)  # guidance changes the logits here


def test_ready_canvas_revision_with_prompt_mask():
    """A corrupted canvas (no masks) with fixed positions: visible generated tokens can be re-masked."""
    model = tiny_model(7)
    g = torch.Generator().manual_seed(7)
    canvas = torch.randint(0, M, (3, 20), generator=g)
    fixed = torch.rand(3, 20, generator=g) < 0.3
    for hist in HISTORY[:3]:
        cfg = DecodeConfig(reveal="all", steps=12, **hist, record_trajectory=True)
        ref = generate(model, canvas, cfg, mask_id=M, prompt_mask=fixed, impl="reference")
        fast = generate(model, canvas, cfg, mask_id=M, prompt_mask=fixed)
        assert_same_decode(ref, fast)
        assert torch.equal(fast.sequences[fixed], canvas[fixed])  # fixed positions never change
    assert int(replay_statistics(fast.trajectory, M).remasks.sum()) > 0


def bert_model(seed):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    return transformers.BertForMaskedLM(cfg).eval()


@pytest.mark.parametrize("hist", [0, 2])
def test_fast_equals_reference_hf_bert(hist):
    model = bert_model(hist)
    ids, am = prompts_batch(hist + 11)
    cfg = DecodeConfig(steps=8, reveal_per_step=2, block_size=4, record_trajectory=True, **HISTORY[hist])
    rm = RMModel(model, random_norm(32, 3))
    ref = generate(rm, ids, cfg, mask_id=M, attention_mask=am, gen_length=8, impl="reference")
    fast = generate(rm, ids, cfg, mask_id=M, attention_mask=am, gen_length=8)
    assert_same_decode(ref, fast)


@pytest.mark.parametrize("cfg", [
    dict(steps=16, reveal_per_step=2, block_size=4, history_steps=3, history_decay=0.2),
    dict(steps=12, reveal="all", temperature=0.9, seed=5, history_steps=2, max_remask=2),
    dict(steps=16, reveal_per_step=2, block_size=4, history_steps=2, rescue_ratio=0.4),
])
def test_batch_invariance(cfg):
    """8 prompts of different lengths decoded together equal each decoded alone."""
    model = tiny_model(3)
    norm = random_norm(32, 3)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, M, (int(n),), generator=g) for n in torch.randint(1, 9, (8,), generator=g)]
    P = max(len(p) for p in prompts)
    ids = torch.zeros(8, P, dtype=torch.long)
    am = torch.zeros(8, P, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, P - len(p):] = p
        am[b, P - len(p):] = 1
    config = DecodeConfig(**cfg)
    batch = generate(model, ids, config, mask_id=M, attention_mask=am, gen_length=8, history_norm=norm)
    for b, p in enumerate(prompts):
        alone = generate(model, p[None], config, mask_id=M, gen_length=8, history_norm=norm)
        assert torch.equal(batch.generated(b), alone.generated(0)), b
        assert batch.steps[b] == alone.steps[0]


class ScriptedModel(torch.nn.Module):
    """Predicts ``target [L]`` at masked positions; at visible ones, the token itself or (where
    ``doubt [L]`` holds) the mask, each with probability ~1. The same script for every row."""

    def __init__(self, target, doubt):
        super().__init__()
        self.target, self.doubt = target, doubt
        self.emb = torch.nn.Embedding(V, 4)
        self.calls = 0

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None):
        self.calls += 1
        if input_ids is None:  # only with a zero HER norm: inputs_embeds are exact rows of the table
            hit = (inputs_embeds[..., None, :] == self.emb.weight).all(-1)  # [B, L, V]
            assert bool((hit.sum(-1) == 1).all()), "inputs_embeds are not rows of the embedding table"
            input_ids = hit.float().argmax(-1)
        x = input_ids
        logits = torch.full((*x.shape, V), -20.0)
        masked = x == M
        pred = torch.where(masked, self.target, torch.where(self.doubt & ~masked, M, x))
        return logits.scatter(-1, pred[..., None], 20.0)


def test_fixed_point_stops():
    target = torch.randint(0, M, (10,))
    canvas = torch.full((2, 10), M)
    canvas[1, :4] = target[:4]  # partly revealed already
    model = ScriptedModel(target, torch.zeros(10, dtype=torch.bool))
    for impl in ("reference", "fast"):
        out = generate(model, canvas, mask_id=M, reveal="all", steps=50, history_steps=0, impl=impl, check_every=1)
        assert torch.equal(out.sequences, target.expand(2, 10))
        assert out.steps.tolist() == [2, 2]  # one step reveals everything, the next changes nothing
        assert out.nfe == 2
    # blocks: each block reaches its fixed point in 2 steps
    out = generate(model, canvas[:1], mask_id=M, reveal="all", steps=50, block_size=5, history_steps=0)
    assert out.steps.tolist() == [4] and torch.equal(out.sequences[0], target)


@pytest.mark.parametrize("cap", [0, 1, 3])
def test_max_remask_holds(cap):
    wrong = torch.randint(0, M, (6,))
    model = ScriptedModel(wrong, torch.ones(6, dtype=torch.bool))  # always doubts, then re-reveals the same
    for impl in ("reference", "fast"):
        out = generate(model, wrong.expand(2, 6).clone(), mask_id=M, reveal="all", steps=40, max_remask=cap, history_steps=0,
                       record_trajectory=True, impl=impl)
        stats = replay_statistics(out.trajectory, M)
        assert stats.remasks.tolist() == [6 * cap, 6 * cap]
        assert stats.replays.tolist() == [6 * cap, 6 * cap]  # every re-reveal puts the withdrawn token back
        assert torch.equal(out.sequences, wrong.expand(2, 6))
        assert out.steps.tolist() == [2 * cap + 1] * 2


class DoubtRatioModel(torch.nn.Module):
    """Predicts ``target [L]`` at masked positions; at a visible one, its own token and the mask with
    ``p(mask) / p(token) = ratio [L]`` (< 1: the RM rule never re-masks), every other id about 0."""

    def __init__(self, target, ratio):
        super().__init__()
        self.target, self.log_ratio = target, torch.log(ratio)
        self.emb = torch.nn.Embedding(V, 4)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None):
        x = input_ids
        masked = x == M
        logits = torch.full((*x.shape, V), -30.0)
        logits = logits.scatter(-1, torch.where(masked, self.target, x)[..., None], 0.0)
        mask_logit = torch.where(masked, torch.tensor(-30.0), self.log_ratio.expand_as(x))
        logits[..., M] = mask_logit
        return logits


@pytest.mark.parametrize("rescues", [0, 1, 2])
def test_stuck_rescue_remasks_doubtful_tokens_at_a_fixed_point(rescues):
    """A canvas the RM rule leaves alone (every p(mask) / p(token) < 1): each rescue re-masks exactly
    the positions above ``rescue_ratio``, the next step reveals them, and after ``max_rescues`` the
    row stops at its fixed point."""
    target = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    ratio = torch.tensor([0.9, 0.05, 0.35, 0.1, 0.25, 0.29, 0.6, 0.01])
    start = (target + 1) % M  # wrong everywhere; revealed positions become `target`
    model = DoubtRatioModel(target, ratio)
    rescued = ratio > 0.3
    for impl in ("reference", "fast"):
        out = generate(model, start.expand(3, 8).clone(), mask_id=M, reveal="all", steps=20, history_steps=0,
                       rescue_ratio=0.3, max_rescues=rescues, record_trajectory=True, impl=impl, check_every=1)
        expect = torch.where(rescued, target, start) if rescues else start
        assert torch.equal(out.sequences, expect.expand(3, 8)), impl
        assert out.steps.tolist() == [2 * rescues + 1] * 3  # (re-mask, reveal) per rescue, then the fixed point
        stats = replay_statistics(out.trajectory, M)
        assert stats.remasks.tolist() == [int(rescued.sum()) * rescues] * 3
        assert torch.equal(out.trajectory[1][0], torch.where(rescued, M, start) if rescues else start)
    # without a rescue the same canvas is a fixed point at once
    out = generate(model, start[None], mask_id=M, reveal="all", steps=20, history_steps=0)
    assert torch.equal(out.sequences[0], start) and out.steps.tolist() == [1]


def test_stuck_rescue_counts_per_block():
    """``max_rescues`` is per block: each block of a semi-autoregressive schedule gets its own."""
    target = torch.tensor([3, 1, 4, 1, 5, 9])
    model = DoubtRatioModel(target, torch.full((6,), 0.5))
    for impl in ("reference", "fast"):
        out = generate(model, torch.full((1, 6), M), mask_id=M, reveal="all", steps=30, block_size=3,
                       history_steps=0, rescue_ratio=0.4, max_rescues=1, record_trajectory=True, impl=impl,
                       check_every=1)
        assert torch.equal(out.sequences[0], target)
        stats = replay_statistics(out.trajectory, M)
        # block 1: reveal, rescue (re-masks its 3), reveal, fixed point; block 2 re-masks block 1's and its own 3
        assert stats.remasks.tolist() == [9], impl


def test_stuck_rescue_is_exercised_by_the_grid():
    """The fast-vs-reference grid cases with a rescue decode differently without it."""
    cases = [i for i, c in enumerate(GRID) if c.get("rescue_ratio")]
    assert cases
    for case in cases:
        model = tiny_model(1000 * case)
        ids, am = prompts_batch(1000 * case)
        on, off = (generate(model, ids, DecodeConfig(**{**GRID[case], "rescue_ratio": r}, history_steps=0), mask_id=M,
                            attention_mask=am, gen_length=8) for r in (GRID[case]["rescue_ratio"], None))
        assert not torch.equal(on.steps, off.steps), case


def test_history_fifo_matches_hand_built_example():
    """Drive the fast decoder step by step and compare its FIFO with the states pushed by hand."""
    target = torch.tensor([3, 1, 4, 1, 5, 9])
    model = ScriptedModel(target, torch.zeros(6, dtype=torch.bool))
    cfg = DecodeConfig(steps=10, reveal="topk", reveal_per_step=2, history_steps=2)
    canvas = build_canvas(torch.full((1, 6), M), M, cfg)
    zero_norm = HistoryNorm(4)
    with torch.no_grad():
        zero_norm.weight.zero_()
    dec = FastDecoder(RMModel(model, zero_norm), canvas, cfg, M, seed=0, kernels="reference")
    states = [dec.x.clone()]
    for _ in range(3):
        dec.step()
        states.append(dec.x.clone())
    # after 3 changing steps the FIFO holds the states before steps 3 and 2 (distance 1, 2)
    assert dec.history.lengths.tolist() == [2]
    assert torch.equal(dec.history.ids[0, 0], states[2][0]) and torch.equal(dec.history.ids[0, 1], states[1][0])
    assert states[1][0].tolist() == [3, 1, M, M, M, M]  # top-2 by probability, ties -> lowest position
    dec.step()  # nothing left to change: a fixed point pushes nothing
    assert dec.history.lengths.tolist() == [2] and torch.equal(dec.history.ids[0, 0], states[2][0])
    assert bool(dec.finished.all())


def test_bad_input():
    model = tiny_model(0)
    ids = torch.randint(0, M, (2, 5))
    ok = dict(mask_id=M, gen_length=4)
    cases = [
        (dict(mask_id=None), "mask_id"),
        (dict(mask_id=V), "mask_id"),
        (dict(mask_id=-3), "mask_id"),
        (dict(gen_length=16, max_length=20), "longer than the canvas"),
        (dict(gen_length=6, block_size=4), "block_size"),
        (dict(steps=0), "steps"),
        (dict(steps=7, block_size=2), "steps"),
        (dict(reveal="some"), "reveal"),
        (dict(suppress_tokens=(M,)), "suppress_tokens"),
        (dict(suppress_tokens=(V + 4,)), "suppress_tokens"),
        (dict(gen_length=0), "gen_length"),
        (dict(impl="turbo"), "impl"),
        (dict(rescue_ratio=0.0), "rescue_ratio"),
        (dict(rescue_ratio=1.0), "rescue_ratio"),
        (dict(rescue_ratio=0.5, sampler="low_confidence"), "rescue_ratio"),
        (dict(rescue_ratio=0.5, remask=False), "rescue_ratio"),
        (dict(rescue_ratio=0.5, max_rescues=-1), "max_rescues"),
    ]
    for override, msg in cases:
        kw = {**ok, **override}
        with pytest.raises(ValueError, match=msg):
            generate(model, ids, **kw)
    with pytest.raises(ValueError, match="longer than the canvas"):  # the limit read from the model's config
        generate(model.inner, ids, mask_id=M, gen_length=45)
    with pytest.raises(ValueError, match="input_ids"):
        generate(model, ids.float(), **ok)
    with pytest.raises(ValueError, match="input_ids is on"):
        generate(model, ids.to("meta"), **ok)
    with pytest.raises(ValueError, match="prompt_mask"):
        generate(model, ids, mask_id=M, prompt_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="attention_mask shape"):
        generate(model, ids, attention_mask=torch.ones(2, 4), **ok)
    with pytest.raises(ValueError, match="history_steps > 0"):
        generate(lambda input_ids=None, attention_mask=None: torch.zeros(*input_ids.shape, V), ids, **ok)

    def wrong_shape(input_ids=None, inputs_embeds=None, attention_mask=None):
        return torch.zeros(input_ids.shape[0], V)

    with pytest.raises(ValueError, match="logits of shape"):
        generate(wrong_shape, ids, history_steps=0, **ok)

    def nan_model(input_ids=None, inputs_embeds=None, attention_mask=None):
        return torch.full((*input_ids.shape, V), float("nan"))

    for impl in ("reference", "fast"):
        with pytest.raises(ValueError, match="NaN"):
            generate(nan_model, ids, history_steps=0, impl=impl, **ok)


def test_plain_callable_and_overrides():
    target = torch.randint(0, M, (6,))
    model = ScriptedModel(target, torch.zeros(6, dtype=torch.bool))
    fn = lambda input_ids=None, inputs_embeds=None, attention_mask=None: model(input_ids=input_ids)  # noqa: E731
    out = generate(fn, torch.full((2, 6), M), mask_id=M, history_steps=0, reveal="all", steps=4)
    assert torch.equal(out.sequences, target.expand(2, 6))
    assert out.nfe >= 2


def test_render_trajectory_marks_reveals_remasks_and_replays():
    from rmkernels.decode.viz import render_trajectory

    traj = torch.tensor([[[3, 5, M]], [[M, M, 2]], [[3, 4, 2]]])  # cell 0 replays 3, cell 1 changes 5 -> 4
    text = render_trajectory(traj, M, color=False)
    lines = text.splitlines()
    assert lines[0] == "step 0 | 3 5 _"
    assert lines[1] == "step 1 | _~ _~ 2+"
    assert lines[2] == "step 2 | 3! 4+ 2"
    assert lines[3] == "reveals 3, re-masks 2, replays 1 (33.33% of reveals)"
    colored = render_trajectory(traj, M, color=True, decode=lambda i: "abcdef"[i])
    assert "\033[97;41md\033[0m" in colored  # the replayed 'd' in red


@pytest.mark.cuda
@pytest.mark.parametrize("hist,rescue", [(0, None), (2, None), (2, 0.1)])
def test_cuda_fast_equals_reference_and_graph_replay(hist, rescue):
    model = tiny_model(5).cuda()
    norm = random_norm(32, 5).cuda()
    ids, am = prompts_batch(5)
    ids, am = ids.cuda(), am.cuda()
    cfg = DecodeConfig(steps=16, reveal_per_step=2, block_size=4, record_trajectory=True, rescue_ratio=rescue,
                       **HISTORY[hist])
    ref = generate(model, ids, cfg, mask_id=M, attention_mask=am, gen_length=8, history_norm=norm, impl="reference")
    fast = generate(model, ids, cfg, mask_id=M, attention_mask=am, gen_length=8, history_norm=norm)
    graphed = generate(model, ids, cfg, mask_id=M, attention_mask=am, gen_length=8, history_norm=norm, cuda_graph=True)
    assert_same_decode(ref, fast)
    assert_same_decode(fast, graphed)
