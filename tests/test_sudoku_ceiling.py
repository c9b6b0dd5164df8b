"""The exact-rate ceiling (rmkernels.tasks.sudoku.ceiling) on boards built with a known answer."""
import numpy as np
import pytest

from rmkernels.tasks.sudoku.ceiling import CLOSER, TIE, UNIQUE, Alternatives, alternatives, canonical_solutions, nearest_grids
from rmkernels.tasks.sudoku.grids import is_valid, seed_grids

pytest.importorskip("ortools")


def _grid_with_rectangle(seed: int):
    """A random valid grid and a swappable rectangle in it: cells p, q, r, t with rows of p, q in
    one band, p and r in one box, values p = t = a, q = r = b (swapping a and b there keeps the grid
    valid)."""
    rng = np.random.default_rng(seed)
    while True:
        g = seed_grids(1, rng)[0]
        for r1 in range(9):
            for r2 in range(r1 + 1, 3 * (r1 // 3) + 3):
                for c1 in range(9):
                    for c2 in range(9):
                        if c1 // 3 == c2 // 3:
                            continue
                        p, q, r, t = 9 * r1 + c1, 9 * r1 + c2, 9 * r2 + c1, 9 * r2 + c2
                        if g[p] == g[t] and g[q] == g[r]:
                            return g, (p, q, r, t)


@pytest.mark.parametrize("seed", [0, 1])
def test_unique_tie_and_closer_boards(seed):
    s, (p, q, r, t) = _grid_with_rectangle(seed)
    swapped = s.copy()
    swapped[[p, q, r, t]] = s[[q, p, t, r]]
    assert bool(is_valid(np.stack([s, swapped])).all())
    other = next(i for i in range(81) if i not in (p, q, r, t))

    unique = s.copy()
    unique[other] = (s[other] + 1) % 9  # one wrong digit: every other grid is >= 3 cells away
    tie = s.copy()
    tie[[p, q]] = swapped[[p, q]]  # half the rectangle swapped: both grids 2 cells away
    closer = s.copy()
    closer[[p, q, r]] = swapped[[p, q, r]]  # 3 of 4 swapped: the swapped grid is 1 away, s 3
    boards = np.stack([unique, tie, closer])

    alt = alternatives(boards, np.stack([s, s, s]))
    assert alt.distance.tolist() == [1, 2, 3]
    assert alt.nearest[0] == -1 and alt.count[0] == 0
    assert alt.nearest[1] == 2 and alt.count[1] >= 1
    assert alt.nearest[2] == 1 and alt.count[2] >= 1
    assert alt.kind.tolist() == [UNIQUE, TIE, CLOSER]
    np.testing.assert_allclose(alt.best_exact, [1.0, 1.0 / (1 + alt.count[1]), 0.0])
    summary = alt.summary()
    assert (summary["boards"], summary["unique"], summary["tie"], summary["closer"]) == (3, 1, 1, 1)
    # the grids themselves: the swapped grid is among the nearest, and every one is valid and that near
    assert nearest_grids(unique, s) == (-1, [])
    for board, dist in ((tie, 2), (closer, 1)):
        near, grids = nearest_grids(board, s)
        assert near == dist and tuple(swapped.tolist()) in grids and tuple(s.tolist()) not in grids
        g = np.array(grids)
        assert bool(is_valid(g).all()) and ((g != board).sum(1) == dist).all()
    labels, changed = canonical_solutions(boards, np.stack([s, s, s]))
    want_tie = min(tuple(s.tolist()), tuple(swapped.tolist()))  # both at distance 2 (if no third grid is)
    assert labels[0].tolist() == s.tolist() and labels[2].tolist() == swapped.tolist()
    assert tuple(labels[1].tolist()) <= want_tie and changed == 1 + (labels[1].tolist() != s.tolist())
    assert summary["ceiling_exact_pct"] == pytest.approx(100 * alt.best_exact.mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_anchored_labels_keep_the_stopped_state_earliest_digits(seed):
    # a decoder stopped halfway between two grids (half the rectangle swapped): both are 2 cells from
    # where it stopped; the anchored label keeps its digits at the earliest of the cells they differ
    # in (row r1, p and q) and clears the later ones, whichever grid that is
    s, (p, q, r, t) = _grid_with_rectangle(seed)
    swapped = s.copy()
    swapped[[p, q, r, t]] = s[[q, p, t, r]]
    upper = s.copy()
    upper[[p, q]] = swapped[[p, q]]  # row r1 as in `swapped`: the label is `swapped`
    lower = s.copy()
    lower[[r, t]] = swapped[[r, t]]  # row r2 as in `swapped`: the label is `s`
    boards, sols = np.stack([upper, lower]), np.stack([s, s])
    labels, changed = canonical_solutions(boards, sols, anchor=boards)
    for j, want in ((0, swapped), (1, s)):
        near, grids = nearest_grids(boards[j], s)
        if len(grids) == 1:  # no third grid as near: the rule picks exactly this one
            assert labels[j].tolist() == want.tolist()
        assert bool(is_valid(labels[j][None]).all()) and int((labels[j] != boards[j]).sum()) == 2
        assert labels[j][min(p, q)] == boards[j][min(p, q)]
    assert changed == int((labels != sols).any(1).sum())
    # the anchor decides, not the input: anchoring the `upper` input at `lower` gives `s`
    lab, _ = canonical_solutions(upper[None], s[None], anchor=lower[None])
    assert lab[0][min(p, q)] == lower[min(p, q)]
    with pytest.raises(ValueError, match="anchor"):
        canonical_solutions(boards, sols, anchor=boards[:1])


def test_summary_arithmetic():
    alt = Alternatives(np.array([5, 5, 5, 5]), np.array([-1, 5, 5, 3]), np.array([0, 1, 3, 2]))
    assert alt.kind.tolist() == [UNIQUE, TIE, TIE, CLOSER]
    assert alt.summary()["ceiling_exact_pct"] == pytest.approx(100 * (1 + 0.5 + 0.25 + 0) / 4)


def test_rejects_bad_boards():
    s, _ = _grid_with_rectangle(0)
    with pytest.raises(ValueError, match="corrupted"):
        alternatives(s[None, :80], s[None, :80])
    with pytest.raises(ValueError, match="solution"):
        alternatives(s[None], np.stack([s, s]))
    masked = s.copy()
    masked[0] = 9
    with pytest.raises(ValueError, match="corrupted"):
        alternatives(masked[None], s[None])
    bad = s.copy()
    bad[0] = (bad[0] + 1) % 9
    with pytest.raises(ValueError, match="solution"):
        alternatives(s[None], bad[None])
    with pytest.raises(ValueError, match="workers"):
        alternatives(s[None], s[None], workers=0)


def test_cli_ceiling(tmp_path, capsys):
    import json

    from rmkernels.cli import main
    from rmkernels.tasks.sudoku.data import write_boards

    s, (p, q, r, t) = _grid_with_rectangle(2)
    swapped = s.copy()
    swapped[[p, q, r, t]] = s[[q, p, t, r]]
    tie = s.copy()
    tie[[p, q]] = swapped[[p, q]]
    unique = s.copy()
    unique[p] = (s[p] + 4) % 9
    boards, out = tmp_path / "b.txt", tmp_path / "c.json"
    write_boards(str(boards), np.stack([unique, tie, unique]), np.stack([s, s, s]))
    assert main(["sudoku", "ceiling", "--boards", str(boards), "--limit", "2", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert (doc["boards"], doc["unique"], doc["tie"], doc["closer"]) == (2, 1, 1, 0)
    assert doc["distance"] == [1, 2] and doc["nearest_other"][0] == -1 and doc["nearest_other"][1] == 2
    assert "best expected exact of any decoder" in capsys.readouterr().out


def test_shipped_ceiling_file_matches_the_shipped_boards():
    """The packaged ceiling of the 1000 test boards (used by `rmk sudoku eval` on its default boards)
    belongs to those boards and agrees with a fresh CP-SAT run on a prefix."""
    from rmkernels.tasks.sudoku.ceiling import load_alternatives
    from rmkernels.tasks.sudoku.evaluate import DEFAULT_CEILING, load_boards

    corrupted, solution = load_boards()
    shipped = load_alternatives(DEFAULT_CEILING, corrupted, solution)  # raises unless the boards match
    assert shipped.kind.size == len(corrupted)
    kind = shipped.kind
    first = [int(np.nonzero(kind == k)[0][0]) for k in (UNIQUE, TIE, CLOSER)]  # one board of each kind
    idx = sorted(set(range(12)) | set(first))
    fresh = alternatives(corrupted[idx], solution[idx])
    for name in ("distance", "nearest", "count"):
        np.testing.assert_array_equal(getattr(fresh, name), getattr(shipped, name)[idx], err_msg=name)
