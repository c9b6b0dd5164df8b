"""Post-training data synthesis (docs/spec.md §4): trajectories, history, oracle labels, offline shards."""
import json
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rmkernels.models import TinyMDM
from rmkernels.reference.loss import PART_IGNORE, PART_KEEP, PART_MASK, PART_REVEAL
from rmkernels.training import (
    RMDataset,
    SynthConfig,
    SynthData,
    build_trajectories,
    global_batch_indices,
    make_batch,
    precompute,
    synthesize,
)
from rmkernels.training.data import step_seed
from rmkernels.training.synth import KIND_CLEAN, KIND_MASKED, KIND_WRONG


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(B, L, V, mask_id, seed, prompt=None):
    """Random targets without the mask id; answer = the last L - prompt positions (prompt random)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor([i for i in range(V) if i != mask_id])
    targets = ids[torch.randint(0, len(ids), (B, L), generator=g)]
    if prompt is None:
        prompt = torch.randint(0, L, (B,), generator=g)  # >= 1 answer position per row
    answer = torch.arange(L)[None, :] >= torch.as_tensor(prompt).reshape(-1, 1)
    return targets, answer


def _expected_history(frames, c, H):
    """What the decoder's FIFO holds at frame c: states before each changing step, newest first."""
    fifo = []
    for f in range(c):
        if frames[f] != frames[f + 1]:
            fifo.insert(0, frames[f])
    return fifo[:H]


def _check_row(traj, batch, targets, answer, b, mask_id, H, wrong_ids=None):
    T = traj.frames.shape[1]
    frames = traj.frames[b].tolist()  # T x [L]
    gold, ans = targets[b].tolist(), answer[b].tolist()
    kind = traj.kind[b].tolist()
    for i, (g, a, k) in enumerate(zip(gold, ans, kind)):
        seq = [frames[f][i] for f in range(T)]
        assert seq[-1] == g  # the last frame is the target
        if not a:
            assert k == KIND_CLEAN, "prompt positions are never noisy"
        if k == KIND_CLEAN:
            assert seq == [g] * T, "prompt and correct positions never change"
        elif k == KIND_MASKED:
            r = seq.index(g)
            assert 1 <= r <= T - 1 and seq == [mask_id] * r + [g] * (T - r)
        else:
            w = seq[0]
            assert w not in (g, mask_id), "a wrong token is neither gold nor the mask"
            if wrong_ids is not None:
                assert w in wrong_ids
            a_ = seq.index(mask_id)
            r = seq.index(g)
            assert 1 <= a_ < r <= T - 1
            assert seq == [w] * a_ + [mask_id] * (r - a_) + [g] * (T - r)
    c = int(traj.current[b])
    cur = frames[c]
    assert batch.input_ids[b].tolist() == cur
    # oracle labels, docs/spec.md §4 table
    for i, (x, g, a) in enumerate(zip(cur, gold, ans)):
        y, p = int(batch.labels[b, i]), int(batch.part[b, i])
        if not a:
            assert p == PART_IGNORE
        elif x == mask_id:
            assert (y, p) == (g, PART_REVEAL)
        elif x == g:
            assert (y, p) == (g, PART_KEEP)
        else:
            assert (y, p) == (mask_id, PART_MASK)
    hist = _expected_history(frames, c, H)
    n = int(batch.history_len[b])
    assert n == len(hist)
    assert batch.history_ids[b, :n].tolist() == hist
    assert batch.token_mask[b].tolist() == ans


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**40),
    B=st.integers(1, 5),
    L=st.integers(1, 17),
    V=st.integers(3, 12),
    frames=st.integers(3, 8),
    H=st.integers(0, 9),
    rate=st.floats(0.0, 1.0),
    wrong_fraction=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
)
def test_trajectories_obey_transition_rules_and_labels_follow_spec(seed, B, L, V, frames, H, rate, wrong_fraction):
    mask_id = seed % V
    targets, answer = _data(B, L, V, mask_id, seed % 1000)
    cfg = SynthConfig(corruption_rate=rate, wrong_fraction=wrong_fraction, frames=frames, history_steps=H)
    traj = build_trajectories(targets, answer, None, mask_id, cfg, seed=seed, vocab_size=V)
    batch = make_batch(traj, targets, answer, mask_id, H)
    assert batch.history_ids.shape == (B, H, L)
    n_noisy = (traj.kind != KIND_CLEAN).sum(1)
    assert torch.equal(n_noisy, torch.round(answer.sum(1).double() * rate).long())
    assert not bool(((traj.kind != KIND_CLEAN) & ~answer).any())
    if wrong_fraction == 0.0:
        assert not bool((traj.kind == KIND_WRONG).any())
    if wrong_fraction == 1.0:
        assert not bool((traj.kind == KIND_MASKED).any())
    for b in range(B):
        _check_row(traj, batch, targets, answer, b, mask_id, H)
    # synthesize() is build_trajectories() + make_batch()
    again = synthesize(targets, answer, None, mask_id, cfg, seed=seed, vocab_size=V)
    for k, v in batch.tensors().items():
        assert torch.equal(v, again.tensors()[k]), k


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), lo=st.integers(0, 6), extra=st.integers(0, 6))
def test_corruption_count_and_wrong_ids(seed, lo, extra):
    """The Sudoku setting: a count range per row, wrong tokens among given ids (digits)."""
    V, mask_id, L = 11, 0, 20
    targets, answer = _data(6, L, V, mask_id, seed % 997, prompt=torch.tensor([0, 3, 10, 15, 19, 5]))
    digits = tuple(range(1, 10))
    cfg = SynthConfig(corruption_rate=None, corruption_count=(lo, lo + extra), wrong_fraction=0.7, frames=5,
                      history_steps=4, wrong_ids=digits)
    traj = build_trajectories(targets, answer, None, mask_id, cfg, seed=seed, vocab_size=V)
    batch = make_batch(traj, targets, answer, mask_id, 4)
    n = (traj.kind != KIND_CLEAN).sum(1)
    cap = answer.sum(1)
    assert bool(((n >= cap.clamp(max=lo)) & (n <= cap.clamp(max=lo + extra))).all())
    for b in range(6):
        _check_row(traj, batch, targets, answer, b, mask_id, 4, wrong_ids=digits)


def test_every_state_and_history_length_occurs():
    """Over many rows the three label parts and every history length up to H show up."""
    V, mask_id, H = 9, 8, 3
    targets, answer = _data(400, 12, V, mask_id, 0, prompt=torch.full((400,), 4))
    batch = synthesize(targets, answer, None, mask_id, SynthConfig(corruption_rate=0.5, frames=6, history_steps=H),
                       seed=5, vocab_size=V)
    assert set(batch.part.unique().tolist()) == {PART_IGNORE, PART_REVEAL, PART_MASK, PART_KEEP}
    assert set(batch.history_len.tolist()) == set(range(H + 1))


def test_wrong_tokens_uniform_over_base_model_topk():
    """Wrong tokens are drawn uniformly from the frozen model's top-k, gold and mask excluded."""
    torch.manual_seed(0)
    V, mask_id, L, k = 23, 22, 16, 5
    model = TinyMDM(vocab_size=V, max_len=L, dim=32, depth=1, heads=2)
    model.train()
    targets, answer = _data(300, L, V, mask_id, 1, prompt=torch.full((300,), 3))
    cfg = SynthConfig(corruption_rate=0.6, wrong_fraction=0.8, topk=k, frames=4, history_steps=2)
    traj = build_trajectories(targets, answer, model, mask_id, cfg, seed=9)
    assert model.training, "the base model's train/eval mode is restored"
    noisy = traj.kind != KIND_CLEAN
    with torch.no_grad():
        model.eval()
        z = model(input_ids=torch.where(noisy, mask_id, targets)).float()  # [B, L, V]
    wrong = traj.kind == KIND_WRONG
    zw, gw, tok = z[wrong], targets[wrong], traj.wrong_token[wrong]
    zw[:, mask_id] = float("-inf")
    zw.scatter_(1, gw[:, None], float("-inf"))
    rank = (zw > zw.gather(1, tok[:, None])).sum(1)  # 0 = the model's favourite wrong token
    assert int(rank.max()) < k
    counts = torch.bincount(rank, minlength=k).double()
    expected = rank.numel() / k
    assert bool((counts > 0.7 * expected).all()) and bool((counts < 1.3 * expected).all()), counts


def test_wrong_tokens_uniform_without_base_model():
    V, mask_id = 7, 3
    targets, answer = _data(200, 10, V, mask_id, 2, prompt=torch.zeros(200, dtype=torch.long))
    traj = build_trajectories(targets, answer, None, mask_id, SynthConfig(corruption_rate=1.0, wrong_fraction=1.0),
                              seed=1, vocab_size=V)
    tok, gold = traj.wrong_token.flatten(), targets.flatten()
    assert not bool((tok == gold).any()) and not bool((tok == mask_id).any())
    # given gold g, each of the V - 2 other ids is about equally likely
    for g in range(V):
        if g == mask_id:
            continue
        c = torch.bincount(tok[gold == g], minlength=V)
        others = [i for i in range(V) if i not in (g, mask_id)]
        assert bool((c[others] > 0).all())


def test_deterministic_per_seed_and_independent_of_batch_composition():
    torch.manual_seed(1)
    V, mask_id, L = 17, 0, 13
    model = TinyMDM(vocab_size=V, max_len=L, dim=32, depth=1, heads=2)
    targets, answer = _data(9, L, V, mask_id, 4)
    cfg = SynthConfig(corruption_rate=0.5, frames=5, history_steps=3)
    for base in (None, model):
        a = synthesize(targets, answer, base, mask_id, cfg, seed=7, vocab_size=V)
        b = synthesize(targets, answer, base, mask_id, cfg, seed=7, vocab_size=V)
        c = synthesize(targets, answer, base, mask_id, cfg, seed=8, vocab_size=V)
        assert all(torch.equal(a.tensors()[k], b.tensors()[k]) for k in a.tensors())
        assert not torch.equal(a.input_ids, c.input_ids)
        rows = torch.tensor([7, 2, 5])
        sub = synthesize(targets[rows], answer[rows], base, mask_id, cfg, seed=7, row_ids=rows, vocab_size=V)
        for k, v in sub.tensors().items():
            assert torch.equal(v, a.tensors()[k][rows]), k


def test_attention_mask_and_no_history():
    V, mask_id = 6, 5
    targets, answer = _data(3, 9, V, mask_id, 3, prompt=torch.tensor([2, 2, 2]))
    attn = torch.ones(3, 9, dtype=torch.bool)
    attn[:, 7:] = False
    answer &= attn
    batch = synthesize(targets, answer, None, mask_id, SynthConfig(history_steps=0), attention_mask=attn, vocab_size=V)
    assert batch.history_ids.shape == (3, 0, 9) and not bool(batch.history_len.any())
    assert torch.equal(batch.attention_mask, attn)
    assert bool((batch.part[:, 7:] == PART_IGNORE).all())


def _bad(fn, match):
    with pytest.raises(ValueError, match=match):
        fn()


def test_bad_input_is_a_clear_error():
    V, mask_id = 8, 7
    targets, answer = _data(3, 6, V, mask_id, 0, prompt=torch.tensor([1, 2, 3]))
    cfg = SynthConfig()
    run = lambda **kw: synthesize(  # noqa: E731
        kw.pop("targets", targets), kw.pop("answer", answer), kw.pop("base", None), kw.pop("mask_id", mask_id),
        kw.pop("cfg", cfg), **{"vocab_size": V, **kw})
    no_answer = answer.clone()
    no_answer[1] = False
    _bad(lambda: run(answer=no_answer), "answer_mask has no answer positions in row")
    _bad(lambda: run(targets=targets.clone().fill_(V)), "targets must lie in")
    gold_mask = targets.clone()
    gold_mask[0, -1] = mask_id
    _bad(lambda: run(targets=gold_mask), "mask id")
    _bad(lambda: run(mask_id=V), "mask_id")
    _bad(lambda: run(answer=answer[:, :-1]), "answer_mask shape")
    _bad(lambda: run(answer=answer.long()), "answer_mask must have dtype")
    _bad(lambda: run(targets=targets.float()), "targets must have dtype")
    _bad(lambda: run(row_ids=torch.arange(2)), "row_ids")
    _bad(lambda: run(vocab_size=None), "vocab_size is required")
    _bad(lambda: run(cfg=SynthConfig(wrong_ids=(1, mask_id))), "wrong_ids")
    _bad(lambda: run(cfg=SynthConfig(wrong_ids=(1, 2, V))), "wrong_ids entry")
    pad = torch.ones_like(answer)
    pad[:, -1] = False
    _bad(lambda: run(attention_mask=pad), "attention_mask excludes")
    base = TinyMDM(vocab_size=V + 1, max_len=6, dim=16, depth=1, heads=2)
    _bad(lambda: run(base=base), r"base_model vocabulary \(9\) differs")
    _bad(lambda: SynthConfig(corruption_rate=0.3, corruption_count=(1, 2)), "exactly one")
    _bad(lambda: SynthConfig(corruption_rate=1.5), "corruption_rate")
    _bad(lambda: SynthConfig(corruption_rate=None, corruption_count=(3, 1)), "corruption_count")
    _bad(lambda: SynthConfig(frames=2), "frames")
    _bad(lambda: SynthConfig(wrong_fraction=-0.1), "wrong_fraction")
    _bad(lambda: SynthConfig(topk=0), "topk")


def test_precompute_shards_round_trip(tmp_path):
    torch.manual_seed(2)
    V, mask_id, L, N = 12, 11, 10, 23
    model = TinyMDM(vocab_size=V, max_len=L, dim=16, depth=1, heads=2)
    targets, answer = _data(N, L, V, mask_id, 6)
    cfg = SynthConfig(corruption_rate=0.4, frames=5, history_steps=3)
    ds = precompute(str(tmp_path), targets, answer, model, mask_id, cfg, seed=3, batch_size=4, shard_size=10)
    index = json.loads((tmp_path / "index.json").read_text())
    assert [s["rows"] for s in index["shards"]] == [10, 10, 3] and index["vocab_size"] == V
    assert sorted(os.listdir(tmp_path)) == ["index.json"] + [f"shard_{i:05d}.safetensors" for i in range(3)]
    full = synthesize(targets, answer, model, mask_id, cfg, seed=3)
    streamed = list(RMDataset.open(str(tmp_path)))
    assert [len(b) for b in streamed] == [10, 10, 3]
    idx = torch.tensor([22, 0, 13, 13, 9, 10, 1])
    got = ds.fetch(idx)
    for k, v in full.tensors().items():
        assert torch.equal(torch.cat([b.tensors()[k] for b in streamed]), v), k
        assert torch.equal(got.tensors()[k], v[idx]), k
    assert (ds.vocab_size, ds.mask_id, ds.history_steps, len(ds), ds.config) == (V, mask_id, 3, N, cfg)
    _bad(lambda: ds.fetch(torch.tensor([N])), "indices")
    _bad(lambda: RMDataset.open(str(tmp_path / "missing")), "index.json")


def test_online_data_and_global_batch_indices():
    V, mask_id = 9, 0
    targets, answer = _data(11, 8, V, mask_id, 8)
    data = SynthData(targets, answer, mask_id, SynthConfig(frames=4, history_steps=2), vocab_size=V, seed=4)
    idx = torch.tensor([3, 1, 10])
    a, b = data.fetch(idx, step=5), data.fetch(idx, step=5)
    assert all(torch.equal(a.tensors()[k], b.tensors()[k]) for k in a.tensors())
    ref = synthesize(targets[idx], answer[idx], None, mask_id, data.config, seed=step_seed(4, 5), row_ids=idx,
                     vocab_size=V)
    assert all(torch.equal(a.tensors()[k], ref.tensors()[k]) for k in a.tensors())
    other = data.fetch(idx, step=6)
    assert not all(torch.equal(a.tensors()[k], other.tensors()[k]) for k in a.tensors())
    # every epoch is a permutation; indices are a pure function of (seed, step)
    n, G = 11, 4
    seen = torch.cat([global_batch_indices(n, G, s, seed=1) for s in range(11)])  # 44 = 4 epochs
    for e in range(4):
        assert sorted(seen[e * n : (e + 1) * n].tolist()) == list(range(n))
    assert torch.equal(global_batch_indices(n, G, 3, 1), global_batch_indices(n, G, 3, 1))
    assert not torch.equal(seen[:n], torch.cat([global_batch_indices(n, G, s, seed=2) for s in range(3)])[:n])
    bad = targets.clone()
    bad[0, -1] = mask_id
    _bad(lambda: SynthData(bad, answer, mask_id, SynthConfig(), vocab_size=V), "mask id")
