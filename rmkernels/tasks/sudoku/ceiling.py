"""The best exact rate any decoder can reach on a set of corrupted boards (the Bayes ceiling).

A corrupted board does not always determine its solution. :func:`rmkernels.tasks.sudoku.grids.corrupt`
changes ``k ~ U{lo..hi}`` cells to uniformly drawn different digits, so a valid grid ``g`` at Hamming
distance ``d`` from the corrupted board ``c`` produces ``c`` with likelihood

    P(c | g) = 1 / ((hi - lo + 1) * C(81, d) * 8^d)      for lo <= d <= hi, else 0,

which falls by ``8 (81 - d) / (d + 1) >= 23`` with each extra cell (``d <= 20``). With every valid
grid equally likely a priori, the most probable solution is the valid grid nearest to ``c``, and
several equally near grids are equally probable. The decoder that maximises the expected exact rate
therefore scores, on a board whose solution is ``k`` cells from ``c``:

* 0 when some other valid grid is strictly nearer (``closer``);
* ``1 / (1 + t)`` when ``t`` other valid grids are exactly as near (``tie``);
* 1 otherwise (``unique``).

(The generator's prior is not exactly uniform, grids being transforms of a finite seed pool, a
bias no model here can plausibly learn.) :func:`alternatives` finds, per board, the nearest valid
grid other than the solution and how many there are with CP-SAT (OR-Tools, ``pip install ortools``, an optional
dependency): 729 Boolean cell-digit variables, exactly one digit per cell and per unit, at least
one cell different from the solution, no farther from ``c`` than the solution (usually infeasible,
which is proved fast), maximise the cells that agree with ``c``; then enumerate all grids at that
distance. About 30 ms per board on one core (28 s for the 1000 test boards).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import torch

from rmkernels.tasks.sudoku.grids import CELLS, DIGITS, UNITS, is_valid

UNIQUE, TIE, CLOSER = "unique", "tie", "closer"


@dataclass
class Alternatives:
    """Per-board result of :func:`alternatives` (arrays of length N)."""

    distance: np.ndarray  # [N] cells the solution differs from the corrupted board (k)
    nearest: np.ndarray  # [N] distance of the nearest other valid grid, -1 if it is farther than k
    count: np.ndarray  # [N] other valid grids at distance `nearest` (0 when nearest == -1)

    @property
    def kind(self) -> np.ndarray:
        """[N] ``"unique"``, ``"tie"`` or ``"closer"`` per board."""
        near = self.nearest >= 0
        return np.where(near & (self.nearest < self.distance), CLOSER, np.where(near, TIE, UNIQUE))

    @property
    def best_exact(self) -> np.ndarray:
        """[N] expected exact score of the Bayes-optimal decoder per board (module docstring)."""
        kind = self.kind
        return np.where(kind == UNIQUE, 1.0, np.where(kind == TIE, 1.0 / (1 + self.count), 0.0))

    def summary(self) -> dict:
        kind = self.kind
        return {"boards": int(kind.size), "unique": int((kind == UNIQUE).sum()), "tie": int((kind == TIE).sum()),
                "closer": int((kind == CLOSER).sum()), "ceiling_exact_pct": 100.0 * float(self.best_exact.mean())}


def _require_ortools():
    try:
        from ortools.sat.python import cp_model
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the exact-rate ceiling needs OR-Tools: pip install ortools") from e
    return cp_model


def nearest_grids(board, solution, *, workers: int = 1) -> tuple[int, list]:
    """The valid grids other than ``solution`` nearest to ``board`` (both ``[81]`` digit ids), if no
    farther from it than the solution: ``(distance, grids)``, or ``(-1, [])`` when every other valid
    grid is farther. ``grids`` lists each as a tuple of 81 digit ids."""
    cp_model = _require_ortools()
    board, solution = [int(v) for v in board], [int(v) for v in solution]
    k = sum(a != b for a, b in zip(board, solution))
    m = cp_model.CpModel()
    x = [[m.NewBoolVar(f"x{i}_{d}") for d in range(DIGITS)] for i in range(CELLS)]
    for i in range(CELLS):
        m.AddExactlyOne(x[i])
    for unit in UNITS.tolist():
        for d in range(DIGITS):
            m.AddExactlyOne([x[i][d] for i in unit])
    m.Add(sum(x[i][solution[i]] for i in range(CELLS)) <= CELLS - 1)  # not the solution
    agree = sum(x[i][board[i]] for i in range(CELLS))
    m.Add(agree >= CELLS - k)  # no farther than the solution
    m.Maximize(agree)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = workers
    status = solver.Solve(m)
    if status == cp_model.INFEASIBLE:
        return -1, []
    if status != cp_model.OPTIMAL:
        raise RuntimeError(f"CP-SAT ended with status {solver.StatusName(status)}")
    nearest = CELLS - round(solver.ObjectiveValue())
    m.ClearObjective()
    m.Add(agree == CELLS - nearest)
    grids = []

    class _Collect(cp_model.CpSolverSolutionCallback):
        def on_solution_callback(self):
            grids.append(tuple(next(d for d in range(DIGITS) if self.Value(x[i][d])) for i in range(CELLS)))

    enum = cp_model.CpSolver()
    enum.parameters.enumerate_all_solutions = True
    enum.parameters.num_workers = 1  # enumeration is single-threaded in CP-SAT
    enum.Solve(m, _Collect())
    return nearest, grids


def canonical_solutions(corrupted, solution, anchor=None) -> tuple[np.ndarray, int]:
    """``(labels [N, 81], changed)``: per board, one of the valid grids nearest to the corrupted
    board (the solution included when no other grid is nearer), and how many rows differ from
    ``solution``. On a tied board this is one consistent answer in place of a coin flip; training
    on it lets a model commit instead of stalling between the grids.

    Without ``anchor`` the label is the lexicographically smallest of those grids. With ``anchor``
    (``[N, 81]`` digit ids, e.g. the state a decoder stopped in) it is the one nearest the anchor,
    and among equally near ones the grid that keeps the anchor's digits at the earliest cells where
    they differ: a rule a model can read off the board it is looking at ("of two clashing digits
    that could each be the wrong one, clear the later"), where the smallest grid needs the digits
    of a grid it has not written."""
    c, s = np.asarray(corrupted), np.asarray(solution)
    a = None if anchor is None else np.asarray(anchor)
    if a is not None and a.shape != c.shape:
        raise ValueError(f"anchor must have the shape of corrupted {c.shape}, got {a.shape}")
    out = s.copy()
    for j in range(len(s)):
        near, grids = nearest_grids(c[j], s[j])
        if grids:
            k = int((c[j] != s[j]).sum())
            grids = grids + ([tuple(s[j].tolist())] if near == k else [])
            if a is None:
                out[j] = min(grids)
            else:
                d = np.asarray(grids) != a[j]  # [G, 81] cells each grid changes in the anchor
                out[j] = grids[min(range(len(grids)), key=lambda i: (d[i].sum(), d[i].tolist()))]
    return out, int((out != s).any(1).sum())


def alternatives(corrupted, solution, *, workers: int = 1, log=None) -> Alternatives:
    """Nearest valid grids other than the solution for each board.

    Parameters
    ----------
    corrupted, solution : array-like ``[N, 81]`` of digit ids 0..8
        Boards as read by :func:`rmkernels.tasks.sudoku.data.read_boards`; every solution must be a
        valid grid.
    workers : int
        CP-SAT search workers for the minimisation (the enumeration uses one).
    log : callable, optional
        Called with a progress line every 100 boards.

    Returns
    -------
    Alternatives
        ``distance``, ``nearest`` and ``count`` per board; ``.summary()`` holds the ceiling.
    """
    c, s = (torch.as_tensor(np.asarray(b)).to(torch.int64) for b in (corrupted, solution))
    if c.ndim != 2 or c.shape[1] != CELLS:
        raise ValueError(f"corrupted must have shape [N, 81], got {tuple(c.shape)}")
    if s.shape != c.shape:
        raise ValueError(f"solution must have the shape of corrupted {tuple(c.shape)}, got {tuple(s.shape)}")
    if ((c < 0) | (c >= DIGITS)).any():
        raise ValueError("corrupted must hold digit ids 0..8 (no masks)")
    if not bool(is_valid(s).all()):
        raise ValueError("solution must hold valid complete grids")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    _require_ortools()
    n = c.shape[0]
    distance = (c != s).sum(1).numpy().astype(np.int64)
    nearest = np.full(n, -1, np.int64)
    count = np.zeros(n, np.int64)
    cl, sl = c.tolist(), s.tolist()
    for j in range(n):
        nearest[j], grids = nearest_grids(cl[j], sl[j], workers=workers)
        count[j] = len(grids)
        if log is not None and (j + 1) % 100 == 0:
            log(f"{j + 1}/{n} boards")
    return Alternatives(distance, nearest, count)


def load_alternatives(path: str, corrupted, solution) -> Alternatives:
    """The :class:`Alternatives` of a ``rmk sudoku ceiling --json`` file, for the first ``len(corrupted)``
    boards of the file it was computed on; raises ``ValueError`` when they cannot be those boards."""
    import json

    with open(path) as f:
        doc = json.load(f)
    try:
        fields = [np.asarray(doc[k], dtype=np.int64) for k in ("distance", "nearest_other", "count_other")]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"ceiling file {path}: not written by `rmk sudoku ceiling --json` ({e})") from None
    n = len(corrupted)
    if any(f.shape != fields[0].shape for f in fields) or fields[0].size < n:
        raise ValueError(f"ceiling file {path} covers {fields[0].size} boards, {n} are evaluated")
    distance = (np.asarray(corrupted) != np.asarray(solution)).sum(1)
    if not np.array_equal(fields[0][:n], distance):
        raise ValueError(f"ceiling file {path} was computed on other boards (corrupted-cell counts differ)")
    return Alternatives(*(f[:n] for f in fields))


def exact_by_kind(final, solution, alt: Alternatives) -> dict:
    """Exact % of ``final [N, 81]`` on the unique / tie / closer boards of ``alt`` (None where a kind has
    no board), the ceiling, and the exact rate as a share of it."""
    exact = (torch.as_tensor(final).long() == torch.as_tensor(np.asarray(solution)).long()).all(1).numpy()
    kind = alt.kind
    out = {}
    for k in (UNIQUE, TIE, CLOSER):
        sel = kind == k
        out[f"exact_{k}_pct"] = 100.0 * float(exact[sel].mean()) if sel.any() else None
        out[f"{k}_boards"] = int(sel.sum())
    out["ceiling_exact_pct"] = 100.0 * float(alt.best_exact.mean())
    out["exact_of_ceiling_pct"] = 100.0 * float(exact.mean()) / max(float(alt.best_exact.mean()), 1e-12)
    return out


__all__ = ["Alternatives", "CLOSER", "TIE", "UNIQUE", "alternatives", "exact_by_kind", "load_alternatives",
           "canonical_solutions", "nearest_grids"]
