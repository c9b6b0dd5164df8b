"""On-policy Sudoku states: the decoder's failed trajectories, mixed into post-training batches."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from rmkernels.tasks.sudoku.data import make_boards
from rmkernels.tasks.sudoku.grids import MASK_ID, sample_grids, seed_grids

import rmkernels.training as training
from rmkernels.history import HistoryNorm
from rmkernels.models import TinyMDM
from rmkernels.tasks.sudoku.evaluate import decode_boards, decode_config
from rmkernels.tasks.sudoku.onpolicy import OnPolicyMix, collect_states
from rmkernels.tasks.sudoku.synth import SudokuRMData

SETTINGS = {"history_steps": 6, "history_decay": 0.5, "history_rotate": True}


def _model(seed=0):
    torch.manual_seed(seed)
    model, norm = TinyMDM(vocab_size=10, max_len=81, dim=16, depth=1, heads=2, grid=9).eval(), HistoryNorm(16)
    with torch.no_grad():  # large random logits: the decoder re-masks and reveals, and fails
        model.head.weight.normal_(0.0, 3.0)
        norm.weight.fill_(0.5)
    return model, norm


def _synthetic():
    rng = np.random.default_rng(0)
    targets = torch.from_numpy(sample_grids(seed_grids(4, rng), 64, rng))
    cfg = training.SynthConfig(corruption_rate=None, corruption_count=(4, 20), wrong_fraction=0.9, topk=8, frames=6,
                               history_steps=6, wrong_ids=tuple(range(9)))
    return SudokuRMData(targets, cfg, seed=0, pair_prob=0.5, wrong_reveal_prob=0.5)


def test_collect_states_keeps_every_state_of_the_failed_boards():
    model, norm = _model()
    corrupted, solution = make_boards("val", 7, seed=5)
    final, steps, traj = decode_boards(model, norm, torch.from_numpy(corrupted), decode_config({"decode": SETTINGS}),
                                       kernels="reference")
    solution[2] = final[2].numpy()  # board 2 now counts as solved: none of its states are kept
    states = collect_states(model, norm, SETTINGS, corrupted, solution, "reference")
    fail = (final != torch.from_numpy(solution)).any(1).nonzero()[:, 0]
    assert 2 not in fail.tolist() and states.frames.shape[0] == fail.numel() == 6
    assert len(states) == int(steps[fail].clamp(min=1).sum())
    assert torch.equal(states.frames, traj[:, fail].transpose(0, 1))
    assert torch.equal(states.gold, torch.from_numpy(solution)[fail])
    k = 0
    for i, b in enumerate(fail.tolist()):  # states grouped by board, 1..steps in order
        n = max(int(steps[b]), 1)
        assert states.current[k : k + n].tolist() == list(range(1, n + 1))
        assert states.board[k : k + n].tolist() == [i] * n
        k += n


def test_mix_appends_oracle_labelled_decoder_states():
    model, norm = _model()
    corrupted, solution = make_boards("val", 6, seed=1)
    states = collect_states(model, norm, SETTINGS, corrupted, solution, "reference")
    frames = states.frames[states.board]  # [P, T + 1, 81] the trajectory of each state
    current, gold = states.current, states.gold[states.board]
    data = OnPolicyMix(_synthetic(), states, rows=5, seed=3)
    idx = torch.arange(16)
    batch = data.fetch(idx, step=4)
    assert len(batch) == 16 and len(data) == 64
    again = data.fetch(idx, step=4)
    assert all(torch.equal(a, b) for a, b in zip(batch.tensors().values(), again.tensors().values()))
    synth = data.synthetic.fetch(idx[:11], 4)
    assert torch.equal(batch.input_ids[:11], synth.input_ids) and torch.equal(batch.labels[:11], synth.labels)
    own = batch.map(lambda t: t[11:])
    assert int(own.history_len.max()) > 0
    for r in range(5):  # each on-policy row is one collected state: its canvas, oracle labels, decoder history
        hits = [p for p in range(frames.shape[0]) if torch.equal(frames[p, current[p]], own.input_ids[r])]
        assert hits, "an on-policy row is not a collected state"
        p = hits[0]
        x, g = own.input_ids[r], gold[p]
        expect = torch.where(x == MASK_ID, g, torch.where(x == g, g, torch.full_like(g, MASK_ID)))
        assert torch.equal(own.labels[r], expect)
        prev = [frames[p, f] for f in range(int(current[p])) if not torch.equal(frames[p, f], frames[p, f + 1])]
        n = min(len(prev), 6)
        assert int(own.history_len[r]) == n
        for d in range(n):
            assert torch.equal(own.history_ids[r, d], prev[-1 - d])


def test_bad_on_policy_settings():
    model, norm = _model()
    corrupted, solution = make_boards("val", 3, seed=1)
    states = collect_states(model, norm, SETTINGS, corrupted, solution, "reference")
    with pytest.raises(ValueError, match="onpolicy_rows"):
        OnPolicyMix(_synthetic(), states, rows=0)
    with pytest.raises(ValueError, match="onpolicy_rows"):
        OnPolicyMix(_synthetic(), states, rows=8).fetch(torch.arange(8), 0)
    with pytest.raises(ValueError, match="nothing to mix"):
        OnPolicyMix(_synthetic(), replace(states, board=states.board[:0], current=states.current[:0]), rows=2)


def test_boards_ending_on_another_valid_grid_are_left_out(monkeypatch):
    import rmkernels.tasks.sudoku.evaluate as evaluate

    corrupted, solution = make_boards("val", 3, seed=2)
    other = solution[0].copy()
    other[solution[0] == 0], other[solution[0] == 1] = 1, 0  # relabel two digits: another valid grid
    final = torch.from_numpy(np.stack([other, corrupted[1], solution[2]]))  # valid other / invalid / solved
    traj = torch.stack([torch.from_numpy(corrupted), final])  # [2, 3, 81]: one step each
    monkeypatch.setattr(evaluate, "decode_boards", lambda *a, **k: (final, torch.ones(3, dtype=torch.long), traj))
    states = collect_states(None, None, SETTINGS, corrupted, solution)
    assert torch.equal(states.gold, torch.from_numpy(solution[1:2]))
    assert torch.equal(states.frames[0, 1], final[1]) and states.current.tolist() == [1] == [len(states)]
    states = collect_states(None, None, SETTINGS, corrupted, solution, only_invalid=False)
    assert torch.equal(states.gold, torch.from_numpy(solution[:2])) and states.board.tolist() == [0, 1]


def test_kept_boards_do_not_depend_on_which_valid_grid_is_the_label():
    # post-training searches canonical labels only for the kept boards: that is only equivalent to
    # labelling every board first if the kept set is the same under any valid-grid labels
    model, norm = _model()
    corrupted, solution = make_boards("val", 7, seed=5)
    relabelled = solution.copy()
    for j in range(0, 7, 2):  # other valid grids (two digits swapped) as the labels of boards 0, 2, 4, 6
        relabelled[j][solution[j] == 0], relabelled[j][solution[j] == 1] = 1, 0
    a = collect_states(model, norm, SETTINGS, corrupted, solution, "reference")
    b = collect_states(model, norm, SETTINGS, corrupted, relabelled, "reference")
    assert a.frames.shape[0] > 0 and torch.equal(a.frames, b.frames) and torch.equal(a.current, b.current)
    assert not torch.equal(a.gold, b.gold)
