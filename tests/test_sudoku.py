"""Sudoku task: generator validity, corruption, validator, board files, splits, metrics, checkpoints."""
import math

import numpy as np
import pytest
import torch

from rmkernels.tasks.sudoku.checkpoint import load_checkpoint
from rmkernels.tasks.sudoku.data import (
    DEFAULT_SEED, format_board, make_boards, parse_boards, read_boards, split_rng, write_boards)
from rmkernels.tasks.sudoku.evaluate import VARIANT_NAMES, checkpoint_path, load_boards
from rmkernels.tasks.sudoku.grids import (
    CELL_UNITS,
    MASK_ID,
    UNITS,
    conflict_cells,
    corrupt,
    grid_clusters,
    grid_fingerprint,
    is_valid,
    sample_grids,
    seed_grids,
    transform_grids,
)
from rmkernels.tasks.sudoku.metrics import (
    ablation_ordering, board_metrics, cluster_robust_se, markdown_table, ordering_table, paired_difference)


def _valid_by_loops(g) -> bool:
    g = np.asarray(g).reshape(9, 9)
    units = [g[r] for r in range(9)] + [g[:, c] for c in range(9)]
    units += [g[3 * (b // 3): 3 * (b // 3) + 3, 3 * (b % 3): 3 * (b % 3) + 3].ravel() for b in range(9)]
    return all(sorted(u.tolist()) == list(range(9)) for u in units)


def _conflicts_by_loops(g) -> np.ndarray:
    g = np.asarray(g).reshape(9, 9)
    out = np.zeros((9, 9), bool)
    for r in range(9):
        for c in range(9):
            v = g[r, c]
            if v == MASK_ID:
                continue
            br, bc = 3 * (r // 3), 3 * (c // 3)
            peers = [(r, j) for j in range(9)] + [(i, c) for i in range(9)]
            peers += [(i, j) for i in range(br, br + 3) for j in range(bc, bc + 3)]
            out[r, c] = any(g[i, j] == v for i, j in set(peers) if (i, j) != (r, c))
    return out.ravel()


def test_units_cover_every_cell_three_times():
    assert UNITS.shape == (27, 9)
    assert np.bincount(UNITS.ravel(), minlength=81).tolist() == [3] * 81
    assert all(c in UNITS[u] for c in range(81) for u in CELL_UNITS[c])


def test_seed_and_transformed_grids_are_valid_and_distinct():
    rng = np.random.default_rng(7)
    pool = seed_grids(13, rng)
    assert all(_valid_by_loops(g) for g in pool)
    grids = sample_grids(pool, 500, rng)
    assert grids.shape == (500, 81) and grids.dtype == np.int64
    assert all(_valid_by_loops(g) for g in grids[:50])
    assert bool(is_valid(grids).all())
    assert len({g.tobytes() for g in grids}) == 500
    again = transform_grids(pool[:1].repeat(3, 0), rng)
    assert len({g.tobytes() for g in again}) == 3


def test_corrupt_changes_the_requested_number_of_cells_to_other_digits():
    rng = np.random.default_rng(3)
    sol = sample_grids(seed_grids(4, rng), 400, rng)
    bad = corrupt(sol, rng, (4, 20))
    changed = (bad != sol).sum(1)
    assert changed.min() >= 4 and changed.max() <= 20
    assert set(np.unique(changed)) == set(range(4, 21))  # every count occurs in 400 draws
    assert bad.min() >= 0 and bad.max() <= 8
    assert not bool(is_valid(bad).any())
    assert (corrupt(sol[:5], rng, (0, 0)) == sol[:5]).all()
    with pytest.raises(ValueError, match="count"):
        corrupt(sol, rng, (5, 4))


def test_conflict_cells_match_a_loop_oracle_on_random_boards():
    rng = np.random.default_rng(11)
    sol = sample_grids(seed_grids(3, rng), 40, rng)
    boards = corrupt(sol, rng, (1, 30))
    boards[rng.random(boards.shape) < 0.1] = MASK_ID  # masked cells are never conflicts
    got = conflict_cells(boards).numpy()
    want = np.stack([_conflicts_by_loops(b) for b in boards])
    assert (got == want).all()
    assert not conflict_cells(sol).any()
    valid = is_valid(boards).numpy()
    assert not valid.any()
    masked_solution = sol.copy()
    masked_solution[:, 5] = MASK_ID
    assert not is_valid(masked_solution).any()  # incomplete is not valid
    assert is_valid(torch.from_numpy(sol)).all()


def test_conflict_cells_hand_made():
    g = seed_grids(1, np.random.default_rng(0))[0].copy()
    g[0], g[1] = g[1], g[0]  # swap within a row: the row stays fine, columns and boxes break
    c = conflict_cells(g[None]).numpy()[0]
    assert c[0] and c[1]
    with pytest.raises(ValueError, match="boards"):
        conflict_cells(np.zeros((2, 80), np.int64))


def test_splits_are_deterministic_and_differ(tmp_path):
    a = make_boards("test", 30, seed=5)
    b = make_boards("test", 30, seed=5)
    c = make_boards("val", 30, seed=5)
    d = make_boards("test", 30, seed=6)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert not (a[1] == c[1]).all(1).any() and not (a[1] == d[1]).all(1).any()
    assert is_valid(a[1]).all()
    with pytest.raises(ValueError, match="split"):
        make_boards("dev", 3)


def test_board_file_round_trip(tmp_path):
    corrupted, solution = make_boards("val", 17, seed=1)
    corrupted[0, 3] = MASK_ID
    path = tmp_path / "b.txt"
    write_boards(str(path), corrupted, solution)
    text = path.read_text().splitlines()
    assert len(text) == 17 and text[0][3] == "0" and len(text[0]) == 163
    c2, s2 = read_boards(str(path))
    assert (c2 == corrupted).all() and (s2 == solution).all()
    assert format_board([0, 8, MASK_ID]) == "190"


def test_parser_errors_name_the_line(tmp_path):
    corrupted, solution = make_boards("val", 2, seed=1)
    good = f"{format_board(corrupted[0])} {format_board(solution[0])}"
    sol = format_board(solution[1])
    cases = [
        (good[:80] + " " + sol, ":3: board has 80 characters"),
        (good.replace(" ", " 1"), ":3: solution has 82 characters"),
        ("x" + good[1:], ":3: board holds the character 'x'"),
        (good[:82] + "0" + good[83:], ":3: solution holds the character '0'"),
        (good + " extra", ":3: expected 2 fields"),
        (good[:82] + sol[1] + sol[0] + sol[2:], ":3: solution is not a valid Sudoku grid"),
    ]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=msg):
            parse_boards(["# comment", good, bad, good], source="f")
    for empty in ([], ["", "# only a comment", "   "]):
        with pytest.raises(ValueError, match="no boards"):
            parse_boards(empty, source="f")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt: no boards"):
        read_boards(str(tmp_path / "empty.txt"))


def test_metrics_on_hand_made_trajectory():
    rng = np.random.default_rng(2)
    sol = torch.from_numpy(sample_grids(seed_grids(2, rng), 2, rng))  # [2, 81]
    start = sol.clone()
    wrong = (sol[0, 0] + 1) % 9
    start[0, 0] = wrong
    start[1, 5] = (sol[1, 5] + 4) % 9
    frames = [start.clone()]
    f = start.clone(); f[0, 0] = MASK_ID; f[1, 5] = MASK_ID; frames.append(f)  # both re-masked
    f = f.clone(); f[0, 0] = wrong; f[1, 5] = sol[1, 5]; frames.append(f)  # row 0 replays its mistake
    f = f.clone(); f[0, 0] = MASK_ID; frames.append(f)  # withdrawn again
    f = f.clone(); f[0, 0] = sol[0, 0]; frames.append(f)  # fixed
    traj = torch.stack(frames)  # [5, 2, 81]
    m = board_metrics(traj[-1], sol, steps=torch.tensor([4, 2]), trajectory=traj)
    assert m["exact_pct"] == 100.0 and m["valid_pct"] == 100.0 and m["conflicts_per_board"] == 0.0
    assert m["replay_pct"] == pytest.approx(100.0 * 1 / 3)  # 3 reveals, 1 replay
    assert m["wrong_replay_pct"] == pytest.approx(100.0 * 1 / 3)  # the replay put a wrong digit back
    assert m["reveals_per_board"] == 1.5 and m["remasks_per_board"] == 1.5 and m["mean_steps"] == 3.0

    m0 = board_metrics(traj[0], sol)  # the start: one wrong cell per board
    assert m0["exact_pct"] == 0.0 and m0["valid_pct"] == 0.0 and m0["replay_pct"] is None
    assert m0["conflicts_per_board"] == float(conflict_cells(traj[0]).sum()) / 2 > 0
    m2 = board_metrics(traj[1], sol)  # masked cells: neither exact nor valid, no conflicts there
    assert m2["exact_pct"] == 0.0 and m2["valid_pct"] == 0.0 and m2["masked_per_board"] == 1.0
    # a correct digit re-masked and revealed again is a replay, but not a wrong one
    g = torch.stack([sol, sol, sol]).clone()
    g[1, 1, 7] = MASK_ID
    mc = board_metrics(g[-1], sol, trajectory=g)
    assert mc["replay_pct"] == 100.0 and mc["wrong_replay_pct"] == 0.0 and mc["reveals_per_board"] == 0.5
    table = markdown_table({"start": m0, "final": m})
    assert table.count("\n") == 3 and "| final | 100.0 | 100.0 | 33.33 | 33.33 | 0.000 | 3.00 | - |" in table
    assert "| start | 0.0 | 0.0 | - | - |" in table


def test_shipped_test_split_is_the_generated_one():
    from rmkernels.tasks.sudoku.assets import default_boards

    corrupted, solution = read_boards(default_boards())
    assert corrupted.shape == (1000, 81)
    changed = (corrupted != solution).sum(1)
    assert changed.min() >= 4 and changed.max() <= 20
    c2, s2 = make_boards("test", 1000, seed=1234)
    assert (c2 == corrupted).all() and (s2 == solution).all()


def test_grid_fingerprint_is_invariant_under_every_symmetry():
    rng = np.random.default_rng(8)
    pool = seed_grids(6, rng)
    fp = grid_fingerprint(pool)
    assert len(set(fp)) == 6  # different seed grids, different fingerprints
    g = pool.reshape(6, 9, 9)
    one_at_a_time = [
        g.transpose(0, 2, 1),  # transpose
        g[:, [3, 4, 5, 0, 1, 2, 6, 7, 8]],  # swap two bands
        g[:, [0, 2, 1, 3, 4, 5, 8, 7, 6]],  # rows within bands
        g[:, :, [6, 7, 8, 3, 4, 5, 0, 1, 2]],  # swap two stacks
        g[:, :, [1, 0, 2, 3, 5, 4, 6, 7, 8]],  # columns within stacks
        np.array([4, 2, 7, 0, 8, 1, 3, 6, 5])[g],  # relabel digits
    ]
    for t in one_at_a_time:
        assert bool(is_valid(t.reshape(6, 81)).all()) and grid_fingerprint(t.reshape(6, 81)) == fp
    assert grid_fingerprint(transform_grids(pool.repeat(4, 0), rng)) == [f for f in fp for _ in range(4)]
    assert grid_clusters(transform_grids(pool[[2, 0, 2, 5, 0]], rng)).tolist() == [0, 1, 0, 2, 1]
    with pytest.raises(ValueError, match="complete"):
        grid_fingerprint(np.full((1, 81), MASK_ID))


def _training_pools():
    """``(split, data_seed, pool_size)`` of every seed-grid pool the shipped checkpoints were trained
    on, read from their metadata (every stage, the base model included)."""
    pools = set()

    def walk(meta):
        if isinstance(meta, dict):
            cfg = meta.get("config")
            if isinstance(cfg, dict) and "data_seed" in cfg and "pool_size" in cfg:
                pools.add(("train", int(cfg["data_seed"]), int(cfg["pool_size"])))
                if cfg.get("onpolicy_boards"):  # posttrain's on-policy boards: their own train pool
                    pools.add(("train", int(cfg["data_seed"]) + 1, 1024))
            for v in meta.values():
                walk(v)

    for name in ("base",) + VARIANT_NAMES:
        walk(load_checkpoint(checkpoint_path(name))[2])
    return pools


def test_no_shipped_test_board_is_a_transform_of_a_training_seed_grid():
    """data.py's claim, on the shipped files: the test split's grids (1000 boards, transforms of
    621 seed grids) share no symmetry-invariant fingerprint with any seed grid the shipped models
    were trained on -- and the fingerprint separates every training seed grid from every other."""
    _, solution = load_boards()  # the shipped test boards
    test_fp = grid_fingerprint(solution)
    pools = _training_pools()
    assert pools  # the checkpoints say what they were trained on
    train = np.concatenate([seed_grids(size, split_rng(split, seed)) for split, seed, size in sorted(pools)])
    train_fp = grid_fingerprint(train)
    assert len(set(train_fp)) == len(train)
    assert not set(test_fp) & set(train_fp)
    # the boards cluster on seed grids: the fingerprint's clusters are exactly those of the generator
    clusters = grid_clusters(solution)
    rng = split_rng("test", DEFAULT_SEED)
    seed_grids(len(solution), rng)  # make_boards: the pool, then each board's pool index
    pool_index = rng.integers(len(solution), size=len(solution))
    assert len(set(clusters.tolist())) == len(set(pool_index.tolist())) == 621
    first = {}
    assert all(first.setdefault(c, p) == p for c, p in zip(clusters.tolist(), pool_index.tolist()))


def test_cli_make_boards(tmp_path):
    from rmkernels.cli import main

    out = tmp_path / "boards.txt"
    assert main(["sudoku", "make-boards", "--split", "val", "--n", "7", "--seed", "3", "--out", str(out)]) == 0
    c, s = read_boards(str(out))
    c2, s2 = make_boards("val", 7, seed=3)
    assert (c == c2).all() and (s == s2).all()


def test_other_grid_metrics_on_a_swapped_rectangle():
    """A final grid with a deadly rectangle swapped (two rows of a band, two columns of different
    stacks holding digits a b / b a) is valid but not the solution; it is 'no farther' when the
    input differs from it in no more cells than from the solution."""
    rng = np.random.default_rng(5)
    found = []
    while not found:
        sol = torch.from_numpy(sample_grids(seed_grids(1, rng), 1, rng))[0]
        g = sol.view(9, 9)
        found = [(c1, c2) for c1 in range(9) for c2 in range(c1 + 1, 9)
                 if c1 // 3 != c2 // 3 and g[0, c1] == g[1, c2] and g[0, c2] == g[1, c1]]
    c1, c2 = found[0]
    other = g.clone()
    other[0, [c1, c2]], other[1, [c1, c2]] = g[0, [c2, c1]], g[1, [c2, c1]]
    other = other.reshape(81)
    assert bool(is_valid(other[None])[0]) and (other != sol).sum() == 4
    inputs = torch.stack([sol, sol, sol])  # [3, 81]
    inputs[0, c1] = other[c1]  # shows 1 cell of the other grid and one unrelated wrong digit:
    inputs[0, 40] = (sol[40] + 1) % 9  # 4 changes to reach the other grid, 2 to the solution
    inputs[1, c1], inputs[1, c2] = other[c1], other[c2]  # 2 changes either way: no farther
    final = torch.stack([other, other, sol])  # board 2 is exact
    m = board_metrics(final, torch.stack([sol, sol, sol]), inputs=inputs)
    assert m["other_grid_pct"] == pytest.approx(200 / 3)
    assert m["other_grid_no_farther_pct"] == pytest.approx(100 / 3)
    assert m["valid_pct"] == 100.0 and m["exact_pct"] == pytest.approx(100 / 3)
    assert board_metrics(final, final)["other_grid_pct"] is None
    with pytest.raises(ValueError, match="inputs"):
        board_metrics(final, torch.stack([sol, sol, sol]), inputs=inputs[:2])


def _ten_boards_with_outcomes(solved):
    """10 boards; board j is solved when ``solved[j]``, else its first cell holds a wrong digit."""
    _, solution = make_boards("val", 10, seed=3)
    final = solution.copy()
    for j in range(10):
        if not solved[j]:
            final[j, 0] = (final[j, 0] + 1) % 9  # one wrong digit: it and the two cells it repeats clash
    return final, solution


def test_paired_difference_by_hand():
    a, solution = _ten_boards_with_outcomes([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    b, _ = _ten_boards_with_outcomes([1, 1, 1, 1, 1, 1, 1, 1, 0, 0])  # b also solves boards 5, 6, 7
    d = paired_difference(a, b, solution, clusters=np.arange(10))  # every board its own cluster
    diff = np.array([0.0] * 5 + [1.0] * 3 + [0.0] * 2)
    assert d["exact_diff_pct"] == pytest.approx(30.0)
    assert d["exact_diff_se_pct"] == pytest.approx(100 * diff.std(ddof=1) / np.sqrt(10))  # the iid SE
    assert (d["only_a_exact"], d["only_b_exact"]) == (0, 3)
    per_board = conflict_cells(torch.from_numpy(b)).sum(1).double() - conflict_cells(torch.from_numpy(a)).sum(1).double()
    assert d["conflicts_diff"] == pytest.approx(float(per_board.mean())) and d["conflicts_diff"] < 0
    assert paired_difference(b, a, solution)["exact_diff_pct"] == pytest.approx(-30.0)
    with pytest.raises(ValueError, match="final_b"):
        paired_difference(a, b[:5], solution)
    with pytest.raises(ValueError, match="at least 2 boards"):
        paired_difference(a[:1], b[:1], solution[:1])


def test_cluster_robust_standard_error_by_hand():
    """Six boards from three seed grids, b solving boards 0, 1 and 4 that a does not: per-board
    differences d = (1, 1, 0, 0, 1, 0), mean 1/2; residual sums per cluster e = (1, -1/2, -1/2);
    SE = sqrt(3/2 * (1 + 1/4 + 1/4)) / 6 = 1/4 (the iid formula would say sqrt(0.3 / 6) = 0.224)."""
    assert cluster_robust_se([1, 1, 0, 0, 1, 0], [0, 0, 1, 1, 1, 2]) == pytest.approx(0.25)
    assert cluster_robust_se([1, 1, 0, 0, 1, 0], [7, 7, 3, 3, 3, -1]) == pytest.approx(0.25)  # any labels
    assert cluster_robust_se([1, 1, 0, 0, 1, 0], np.arange(6)) == pytest.approx(math.sqrt(0.3 / 6))
    outcome_a = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    outcome_b = [1, 1, 0, 0, 1, 0, 0, 0, 0, 0]
    a, solution = _ten_boards_with_outcomes(outcome_a)
    b, _ = _ten_boards_with_outcomes(outcome_b)
    d = paired_difference(a[:6], b[:6], solution[:6], clusters=[0, 0, 1, 1, 1, 2])
    assert d["exact_diff_pct"] == pytest.approx(50.0) and d["exact_diff_se_pct"] == pytest.approx(25.0)
    assert d["clusters"] == 3
    # default clusters: the boards' seed grids, found from the solutions by their fingerprint
    rng = np.random.default_rng(1)
    grids = seed_grids(3, rng)
    twice = np.concatenate([transform_grids(grids, rng), transform_grids(grids, rng)])
    d = paired_difference(twice, twice, twice)
    assert d["clusters"] == 3 and d["exact_diff_se_pct"] == 0.0
    with pytest.raises(ValueError, match="at least 2 clusters"):
        cluster_robust_se([1, 0, 1], [4, 4, 4])
    with pytest.raises(ValueError, match="clusters"):
        cluster_robust_se([1, 0, 1], [0, 1])


def test_ablation_ordering_verdicts():
    n = 400
    _, solution = make_boards("val", n, seed=4)
    def outcome(k):  # the first k boards solved, the others one wrong digit
        f = solution.copy()
        f[k:, 0] = (f[k:, 0] + 1) % 9
        return f
    finals = {"rm": outcome(200), "rm_hist": outcome(300), "full": outcome(300), "rm_hist_decay": outcome(0)}
    rel = ablation_ordering(finals, solution)
    assert [(r["a"], r["b"], r["verdict"]) for r in rel] == [
        ("rm", "rm_hist", "holds"), ("rm_hist", "full", "not contradicted (within 2 SE)")]
    rel = ablation_ordering({"rm": outcome(300), "rm_hist": outcome(200), "full": outcome(100)}, solution)
    assert [r["verdict"] for r in rel] == ["reversed", "reversed"]
    rel = ablation_ordering({"rm": outcome(300), "rm_hist": outcome(302)}, solution)  # 2 boards of 400: noise
    assert [r["verdict"] for r in rel] == ["unresolved (within 2 SE)"]
    assert ablation_ordering({"full": outcome(1)}, solution) == []
    table = ordering_table(rel, {"rm": "RM", "rm_hist": "RM + history"})
    assert "| RM < RM + history | +0.5 (0.4) | 0 / 2 |" in table
