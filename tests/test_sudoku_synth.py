"""Sudoku post-training data: docs/spec.md §4 trajectories plus swapped pairs and wrong reveals."""
import numpy as np
import pytest
import torch

from rmkernels.tasks.sudoku.grids import MASK_ID, is_valid, sample_grids, seed_grids

import rmkernels.training as training
from rmkernels.tasks.sudoku.synth import CLOSE_PEERS, PEERS, SudokuRMData, add_decoder_mistakes, rectangle_partner


def _targets(n=96, seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(sample_grids(seed_grids(4, rng), n, rng))


def _config(frames=6):
    return training.SynthConfig(corruption_rate=None, corruption_count=(4, 20), wrong_fraction=0.6, topk=8,
                                frames=frames, history_steps=6, wrong_ids=tuple(range(9)))


def _pattern(seq, gold):
    """A cell's frames as a run-length pattern over {G (gold), W (wrong), M}."""
    out = []
    for v in seq:
        c = "M" if v == MASK_ID else ("G" if v == gold else "W")
        if not out or out[-1] != c:
            out.append(c)
    return "".join(out)


def test_peers():
    assert PEERS.shape == (81, 81) and (PEERS.sum(1) == 20).all() and (PEERS == PEERS.T).all()
    assert PEERS[0, 8] and PEERS[0, 72] and PEERS[0, 20] and not PEERS[0, 30] and not PEERS[0, 0]
    assert (CLOSE_PEERS.sum(1) == 4).all() and (CLOSE_PEERS <= PEERS).all()
    assert CLOSE_PEERS[0, 1] and CLOSE_PEERS[0, 18] and not CLOSE_PEERS[0, 8] and not CLOSE_PEERS[0, 10]


def test_without_mistakes_it_is_the_spec_synthesis():
    t = _targets()
    cfg = _config()
    ours = SudokuRMData(t, cfg, seed=5).fetch(torch.arange(7, 40), step=3)
    spec = training.SynthData(t, torch.ones_like(t, dtype=torch.bool), MASK_ID, cfg, seed=5, vocab_size=10)
    ref = spec.fetch(torch.arange(7, 40), step=3)
    for k, v in ref.tensors().items():
        assert torch.equal(ours.tensors()[k], v), k


@pytest.mark.parametrize("frames", [6, 8])
def test_mistakes_follow_the_extended_transition_rules(frames):
    t = _targets()
    cfg = _config(frames)
    traj = training.build_trajectories(t, torch.ones_like(t, dtype=torch.bool), None, MASK_ID, cfg, seed=11,
                                       vocab_size=10)
    edited, gold = add_decoder_mistakes(traj, t, np.random.default_rng(0), pair_prob=1.0, wrong_reveal_prob=1.0)
    assert torch.equal(gold, t)  # the generator's grids stay the labels unless pair_labels="anchored"
    assert edited.shape == traj.frames.shape and torch.equal(edited[:, -1], t)
    seen, swaps = set(), 0
    for b in range(t.shape[0]):
        for x in range(81):
            seen.add(_pattern(edited[b, :, x].tolist(), int(t[b, x])))
        f = edited[b].numpy()
        g = t[b].numpy()
        for k in range(frames):
            wrong = np.nonzero((f[k] != g) & (f[k] != MASK_ID))[0]
            swaps += sum(CLOSE_PEERS[x, y] and f[k, x] == g[y] and f[k, y] == g[x] for x in wrong for y in wrong if x < y)
    assert seen <= {"G", "WMG", "MG", "MWMG"} and "MWMG" in seen and "WMG" in seen
    assert swaps > 0
    unchanged, gold = add_decoder_mistakes(traj, t, np.random.default_rng(0), 0.0, 0.0)
    assert torch.equal(unchanged, traj.frames) and torch.equal(gold, t)


def test_rectangle_partner_finds_swappable_rectangles():
    t = _targets(64).numpy()
    found = 0
    for g in t:
        for x in range(81):
            for y in range(x + 1, 81):
                if not PEERS[x, y]:
                    continue
                other = rectangle_partner(g, x, y)
                if other is None:
                    continue
                found += 1
                b = g.copy()
                b[[x, y, *other]] = g[[y, x, other[1], other[0]]]
                assert bool(is_valid(torch.from_numpy(np.stack([g, b]))).all()) and int((b != g).sum()) == 4
    assert found > 0


@pytest.mark.parametrize("frames", [6, 8])
def test_anchored_pair_labels_keep_the_earliest_digits(frames):
    # a swapped pair that is half of a swappable rectangle is as near the other grid as the gold one;
    # anchored, the target is the grid that keeps the shown digits at the earliest of the 4 cells
    t = _targets(96)
    cfg = _config(frames)
    traj = training.build_trajectories(t, torch.ones_like(t, dtype=torch.bool), None, MASK_ID, cfg, seed=3,
                                       vocab_size=10)
    plain, _ = add_decoder_mistakes(traj, t, np.random.default_rng(4), 1.0, 0.0)
    edited, gold = add_decoder_mistakes(traj, t, np.random.default_rng(4), 1.0, 0.0, pair_labels="anchored")
    assert bool(is_valid(gold).all()) and torch.equal(edited[:, -1], gold)
    moved = (gold != t).any(1)
    assert moved.any() and torch.equal(edited[~moved], plain[~moved])
    for b in moved.nonzero()[:, 0].tolist():
        diff = (gold[b] != t[b]).nonzero()[:, 0].tolist()
        assert len(diff) % 4 == 0  # whole rectangles
        first = min(diff)  # the earliest cell of the rectangle is in the swapped pair: its digit is kept
        assert plain[b, 0, first] != t[b, first] and edited[b, 0, first] == gold[b, first]
        for x in range(81):  # the transition rules hold against the new target
            assert _pattern(edited[b, :, x].tolist(), int(gold[b, x])) in {"G", "WMG", "MG", "MWMG"}


def test_labels_of_wrong_reveals_are_the_mask():
    t = _targets(64)
    batch = SudokuRMData(t, _config(), seed=1, pair_prob=1.0, wrong_reveal_prob=1.0).fetch(torch.arange(64), 2)
    wrong = (batch.input_ids != t) & (batch.input_ids != MASK_ID)
    assert wrong.any()
    assert (batch.labels[wrong] == MASK_ID).all() and (batch.part[wrong] == 1).all()
    # a cell masked in the previous state and wrong now: a wrong reveal the model must take back
    prev_masked = (batch.history_ids[:, 0] == MASK_ID) & (batch.history_len > 0)[:, None]
    assert (prev_masked & wrong).any()


def test_bad_probabilities():
    with pytest.raises(ValueError, match="pair_prob"):
        SudokuRMData(_targets(4), _config(), pair_prob=1.5)
    with pytest.raises(ValueError, match="wrong_reveal_prob"):
        SudokuRMData(_targets(4), _config(), wrong_reveal_prob=-0.1)
