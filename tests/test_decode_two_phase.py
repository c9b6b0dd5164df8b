"""Two-phase editing decode (docs/spec.md §10): phase-1 re-masking, unmasking schedules, fast == reference."""
import math

import pytest
import torch

from rmkernels import DecodeConfig, generate
from rmkernels.decode import replay_statistics
from rmkernels.decode.sampler import RMSampler
from rmkernels.decode.schedule import masked_after, reveal_count
from test_decode import HISTORY, M, V, ScriptedModel, assert_same_decode, prompts_batch, random_norm, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
# the fast path's statistics kernels are checked against the reference in their own tests (and,
# with the decoder, in test_decode); under the Triton interpreter they cost ~100x, so these tests
# run the fast path's batched logic with the reference statistics except where marked
K = "reference"


# ---------------------------------------------------------------------------------------------
# schedule counts
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_counts_match_the_formula(kind):
    f = (lambda u: math.cos(math.pi / 2 * u)) if kind == "cosine" else (lambda u: 1 - u)
    for T in range(1, 13):
        for n in range(0, 70):
            got = masked_after(n, torch.arange(T + 3), T, kind).tolist()
            assert got[0] == n and got[T:] == [0, 0, 0], (n, T, got)
            assert all(a >= b for a, b in zip(got, got[1:])), (n, T, got)  # non-increasing
            for t in range(1, T):
                exact = n * f(t / T)
                if abs(exact - round(exact)) > 1e-6:  # away from integers, float rounding cannot matter
                    assert got[t] == math.ceil(exact), (n, t, T, kind)
                else:  # the exact value is an integer: its ceiling is itself
                    assert got[t] == round(exact), (n, t, T, kind)


def test_schedule_hand_values():
    assert masked_after(10, torch.arange(5), 4, "cosine").tolist() == [10, 10, 8, 4, 0]  # 9.24, 7.07, 3.83
    assert masked_after(10, torch.arange(5), 4, "linear").tolist() == [10, 8, 5, 3, 0]
    assert masked_after(2, torch.arange(4), 3, "cosine").tolist() == [2, 2, 1, 0]  # 2 cos(pi/3) = 1 exactly
    assert masked_after(torch.tensor([4, 9]), torch.tensor([1, 2]), torch.tensor([2, 3]), "linear").tolist() == [2, 3]
    # reveals: at least one, the excess over the next target otherwise
    assert reveal_count(10, 10, 0, 4, "cosine").item() == 1  # target after step 1 is 10 as well
    assert reveal_count(10, 10, 1, 4, "cosine").item() == 2
    assert reveal_count(7, 10, 3, 4, "cosine").item() == 7  # last step: everything
    with pytest.raises(ValueError, match="kind"):
        masked_after(3, 1, 2, "sqrt")


def test_config_validation():
    for bad in (dict(phase1_threshold=1.0), dict(phase1_threshold=-0.1), dict(phase1_steps=0),
                dict(schedule="exp"), dict(schedule="cosine", reveal="all"), dict(schedule_steps=0)):
        with pytest.raises(ValueError, match=next(iter(bad)) if "reveal" not in bad else "reveal"):
            DecodeConfig(**bad)
    cfg = DecodeConfig(steps=10, phase1_threshold=0.9, phase1_steps=3)
    assert cfg.max_steps == 13 and DecodeConfig(steps=10).max_steps == 10
    # not combined with a KV cache (docs/spec.md §8 edits the active block only), nor in RMSampler
    for bad in (dict(phase1_threshold=0.9), dict(schedule="cosine")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DecodeConfig(cache="dual", **bad)
        with pytest.raises(ValueError, match="RMSampler takes neither"):
            RMSampler(DecodeConfig(**bad), mask_id=M)


# ---------------------------------------------------------------------------------------------
# the scheduled reveal counts, end to end on a scripted model
def test_cosine_schedule_reveals_as_counted():
    """A model that always knows the answer (never doubts): the masked count after step t is
    ceil(n cos(pi/2 t/T)), or one less than before where that would reveal nothing."""
    L, T = 20, 6
    target = torch.arange(L) % M
    model = ScriptedModel(target, torch.zeros(L, dtype=torch.bool))
    canvas = torch.full((1, L), M)
    for impl in ("reference", "fast"):
        out = generate(model, canvas, DecodeConfig(steps=T, schedule="cosine", history_steps=0, record_trajectory=True),
                       mask_id=M, prompt_mask=torch.zeros(1, L, dtype=torch.bool), impl=impl, kernels=K)
        masked = (out.trajectory[:, 0] == M).sum(1).tolist()
        targets = masked_after(L, torch.arange(T + 1), T, "cosine").tolist()
        assert targets == [20, 20, 18, 15, 10, 6, 0]
        assert masked == [20, 19, 18, 15, 10, 6, 0]
        assert torch.equal(out.sequences[0], target)


def test_phase1_remasks_the_doubted_tokens_then_regenerates_them():
    L = 12
    target = torch.arange(L) % M
    doubt = torch.zeros(L, dtype=torch.bool)
    doubt[[2, 5, 9]] = True
    canvas = target.clone()[None]
    canvas[0, [2, 5, 9]] = (target[[2, 5, 9]] + 1) % M  # wrong tokens where the model doubts

    class Flip(ScriptedModel):  # doubts a position only while it holds the wrong token
        def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None):
            self.doubt = (input_ids != M) & (input_ids != self.target)
            return super().forward(input_ids=input_ids)

    for impl in ("reference", "fast"):
        model = Flip(target, doubt)
        cfg = DecodeConfig(steps=4, phase1_threshold=0.9, phase1_steps=5, schedule="linear", remask=False,
                           history_steps=0, record_trajectory=True)
        out = generate(model, canvas, cfg, mask_id=M, impl=impl, kernels=K)
        traj = out.trajectory[:, 0]
        assert set((traj[1] == M).nonzero().flatten().tolist()) == {2, 5, 9}  # phase 1 step 1
        assert torch.equal(traj[2], traj[1])  # phase 1 step 2 changes nothing: phase 1 ends
        assert torch.equal(out.sequences[0], target)
        # linear over the 4-step budget, n = 3: targets 3 -> 3, 2, 1, 0 (ceil(3*3/4) = 3: one reveal)
        assert [int((t == M).sum()) for t in traj[2:]] == [3, 2, 1, 0, 0][: traj.shape[0] - 2]


def test_phase1_threshold_is_strict_and_needs_mask_above_token():
    """p(mask) must exceed both the threshold and p(token): a model splitting 0.5 / 0.5 between the
    mask and the token re-masks nothing at threshold 0.4."""

    class Split(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(V, 4)

        def get_input_embeddings(self):
            return self.emb

        def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None):
            z = torch.full((*input_ids.shape, V), -30.0)
            z.scatter_(-1, input_ids[..., None], 0.0)
            z[..., M] = 0.0
            return z

    canvas = torch.randint(0, M, (2, 6), generator=torch.Generator().manual_seed(0))
    for impl in ("reference", "fast"):
        out = generate(Split(), canvas, DecodeConfig(steps=2, phase1_threshold=0.4, history_steps=0, remask=False),
                       mask_id=M, impl=impl, kernels=K)
        assert torch.equal(out.sequences, canvas)
        assert out.steps.tolist() == [2, 2]  # one phase-1 step (no change), one step of phase 2 (fixed point)


# ---------------------------------------------------------------------------------------------
# reference loop == fast path, and batch invariance, on random tiny models
TWO_PHASE = [
    dict(phase1_threshold=0.6, steps=8, schedule="cosine"),
    dict(phase1_threshold=0.3, phase1_steps=2, steps=6, schedule="linear", max_remask=2),
    dict(phase1_threshold=0.5, steps=8, schedule="cosine", schedule_steps=4, block_size=None),
    dict(phase1_threshold=0.0, phase1_steps=3, steps=8, reveal="all"),
    dict(steps=9, schedule="cosine", temperature=0.9, seed=7),
    dict(phase1_threshold=0.5, steps=8, schedule="linear", sampler="confidence_remask", remask_threshold=0.3),
    dict(phase1_threshold=0.4, steps=12, schedule="cosine", rescue_ratio=0.2, remask_interval=2),
    dict(phase1_threshold=0.7, steps=8, schedule="linear", block_size=4, allow_mask_candidate=False),
]


def edit_canvas(seed: int, B: int = 5, L: int = 17):
    """Corrupted ready canvases with some masks and a fixed first position (a condition slot)."""
    g = torch.Generator().manual_seed(seed)
    canvas = torch.randint(0, M, (B, L), generator=g)
    canvas[torch.rand(B, L, generator=g) < 0.2] = M
    fixed = torch.zeros(B, L, dtype=torch.bool)
    fixed[:, 0] = True
    canvas[:, 0] = torch.randint(0, M, (B,), generator=g)
    return canvas, fixed


CASES = [(c, c % 4) for c in range(len(TWO_PHASE))]  # every case, history settings cycling


@pytest.mark.parametrize("case,hist", CASES)
def test_two_phase_fast_equals_reference(case, hist):
    seed = 100 * case + hist
    model, norm = tiny_model(seed), random_norm(32, seed)
    cfg = DecodeConfig(**TWO_PHASE[case], **HISTORY[hist], record_trajectory=True)
    canvas, fixed = edit_canvas(seed)
    ref = generate(model, canvas, cfg, mask_id=M, prompt_mask=fixed, history_norm=norm, impl="reference")
    fast = generate(model, canvas, cfg, mask_id=M, prompt_mask=fixed, history_norm=norm, check_every=3, kernels=K)
    assert_same_decode(ref, fast)
    assert torch.equal(fast.sequences[:, 0], canvas[:, 0])
    if case % 3 == 0:  # prompts extended by masks (gen_length mode) too
        ids, am = prompts_batch(seed)
        ref = generate(model, ids, cfg, mask_id=M, attention_mask=am, gen_length=8, history_norm=norm, impl="reference")
        fast = generate(model, ids, cfg, mask_id=M, attention_mask=am, gen_length=8, history_norm=norm, kernels=K)
        assert_same_decode(ref, fast)


def test_two_phase_fast_equals_reference_with_the_kernels():
    """One case through the fast path's own kernels (the Triton interpreter / C++ here)."""
    model, norm = tiny_model(5), random_norm(32, 5)
    cfg = DecodeConfig(**TWO_PHASE[1], **HISTORY[2], record_trajectory=True)
    canvas, fixed = edit_canvas(5, B=3, L=9)
    ref = generate(model, canvas, cfg, mask_id=M, prompt_mask=fixed, history_norm=norm, impl="reference")
    fast = generate(model, canvas, cfg, mask_id=M, prompt_mask=fixed, history_norm=norm)
    assert_same_decode(ref, fast)


def test_two_phase_cases_exercise_phase1():
    """The comparisons above are meaningful: phase 1 re-masks something, and phase 2 both reveals and re-masks."""
    model = tiny_model(0)
    canvas, fixed = edit_canvas(0)
    cfg = DecodeConfig(**TWO_PHASE[0], history_steps=0, record_trajectory=True)
    out = generate(model, canvas, cfg, mask_id=M, prompt_mask=fixed, kernels=K)
    first = (out.trajectory[1] == M) & (out.trajectory[0] != M)
    assert int(first.sum()) > 0
    assert bool((out.trajectory[1] != M).logical_or(out.trajectory[0] == M).logical_or(first).all())  # no reveal
    stats = replay_statistics(out.trajectory, M)
    assert int(stats.reveals.sum()) > 0 and int(stats.remasks.sum()) > int(first.sum())


@pytest.mark.parametrize("case", [0, 1, 6])
def test_two_phase_batch_invariance(case):
    model, norm = tiny_model(9), random_norm(32, 9)
    cfg = DecodeConfig(**TWO_PHASE[case], history_steps=2, history_decay=0.3)
    canvas, fixed = edit_canvas(9, B=6)
    batch = generate(model, canvas, cfg, mask_id=M, prompt_mask=fixed, history_norm=norm, kernels=K)
    for b in range(6):
        alone = generate(model, canvas[b : b + 1], cfg, mask_id=M, prompt_mask=fixed[b : b + 1], history_norm=norm,
                         kernels=K)
        assert torch.equal(batch.sequences[b], alone.sequences[0]), b
        assert batch.steps[b] == alone.steps[0]


@pytest.mark.cuda
@pytest.mark.parametrize("case", [0, 6])
def test_cuda_two_phase_fast_equals_reference_and_graph_replay(case):
    """On a GPU: the fast path (own kernels) equals the reference, and a CUDA-graph replay of the
    step (phase flags and schedule state on the device) equals both."""
    model, norm = tiny_model(11).cuda(), random_norm(32, 11).cuda()
    cfg = DecodeConfig(**TWO_PHASE[case], **HISTORY[2], record_trajectory=True)
    canvas, fixed = edit_canvas(11)
    canvas, fixed = canvas.cuda(), fixed.cuda()
    ref = generate(model, canvas, cfg, mask_id=M, prompt_mask=fixed, history_norm=norm, impl="reference")
    fast = generate(model, canvas, cfg, mask_id=M, prompt_mask=fixed, history_norm=norm)
    graphed = generate(model, canvas, cfg, mask_id=M, prompt_mask=fixed, history_norm=norm, cuda_graph=True)
    assert_same_decode(ref, fast)
    assert_same_decode(fast, graphed)


@pytest.mark.parametrize("case", range(len(TWO_PHASE)))
def test_fast_step_updates_its_state_in_place(case):
    """A CUDA-graph replay reads and writes the tensors that existed at capture: every piece of the
    fast decoder's state must be updated in place, never rebound to a new tensor (the schedule's
    masked count once was, so graph replays revealed by a stale count; only a GPU showed it)."""
    from rmkernels.decode.canvas import build_canvas
    from rmkernels.decode.fast import FastDecoder
    from rmkernels.decode.model import as_rm_model

    model, norm = tiny_model(case), random_norm(32, case)
    cfg = DecodeConfig(**TWO_PHASE[case], **HISTORY[case % 4])
    canvas, fixed = edit_canvas(case)
    dec = FastDecoder(as_rm_model(model, norm), build_canvas(canvas, M, cfg, prompt_mask=fixed), cfg, M,
                      seed=0, kernels="reference")
    before = [t.data_ptr() for t in dec._state()]
    for _ in range(4):
        dec.step()
    assert [t.data_ptr() for t in dec._state()] == before
