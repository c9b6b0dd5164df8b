"""Sudoku grids: a generator of valid complete grids, corrupted boards and a vectorised validator.

Cells are numbered row-major 0..80. Boards hold token ids: 0..8 are the digits 1..9 and
``MASK_ID = 9`` is the mask (vocabulary size 10).

Generation: a randomised backtracking search (minimum-remaining-values order, bitmask candidates)
draws a pool of *seed grids*; each requested grid is a seed grid under a random validity-preserving
transform (relabel digits, permute bands / rows within bands / stacks / columns within stacks,
transpose). Vectorised over the batch, this yields many distinct grids per second.
"""
from __future__ import annotations

import numpy as np
import torch

DIGITS = 9
CELLS = 81
MASK_ID = 9
VOCAB_SIZE = 10


def _units() -> np.ndarray:
    rows = [[9 * r + c for c in range(9)] for r in range(9)]
    cols = [[9 * r + c for r in range(9)] for c in range(9)]
    boxes = [[9 * (3 * (b // 3) + i // 3) + 3 * (b % 3) + i % 3 for i in range(9)] for b in range(9)]
    return np.array(rows + cols + boxes, dtype=np.int64)


UNITS = _units()  # [27, 9] cell ids of each row, column and box
CELL_UNITS = np.stack([np.nonzero((UNITS == c).any(1))[0] for c in range(CELLS)])  # [81, 3] row, col, box
_POPCOUNT = np.array([bin(m).count("1") for m in range(512)])
_BITS = [[d for d in range(9) if m >> d & 1] for m in range(512)]


def _backtrack_grid(rng: np.random.Generator) -> np.ndarray:
    """One random complete grid [81] (values 0..8) by randomised MRV backtracking."""
    grid = [-1] * CELLS
    used = [0] * 27  # bitmask of values present per unit
    cu = CELL_UNITS.tolist()
    order = rng.random(9).argsort().tolist()  # random value preference, one per grid

    def solve() -> bool:
        best, best_free = -1, 10
        for c in range(CELLS):  # minimum remaining values
            if grid[c] < 0:
                a, b, d = cu[c]
                free = ~(used[a] | used[b] | used[d]) & 511
                n = _POPCOUNT[free]
                if n < best_free:
                    best, best_free, best_mask = c, n, free
                    if n <= 1:
                        break
        if best < 0:
            return True
        if best_free == 0:
            return False
        a, b, d = cu[best]
        cands = _BITS[best_mask]
        for v in sorted(cands, key=lambda v: (order[v] + rng.integers(9)) % 9) if len(cands) > 1 else cands:
            bit = 1 << v
            grid[best] = v
            used[a] |= bit
            used[b] |= bit
            used[d] |= bit
            if solve():
                return True
            used[a] &= ~bit
            used[b] &= ~bit
            used[d] &= ~bit
            grid[best] = -1
        return False

    solve()
    return np.array(grid, dtype=np.int64)


def seed_grids(n: int, rng: np.random.Generator) -> np.ndarray:
    """Random complete grids from randomised backtracking.

    Parameters
    ----------
    n : int
        Number of grids.
    rng : numpy.random.Generator

    Returns
    -------
    ndarray
        ``[n, 81]`` int64, values 0..8 (row-major cells).

    Example
    -------
    >>> g = seed_grids(2, np.random.default_rng(0))
    >>> bool(is_valid(g).all())
    True
    """
    return np.stack([_backtrack_grid(rng) for _ in range(n)]) if n else np.zeros((0, CELLS), np.int64)


def _line_perm(n: int, rng: np.random.Generator) -> np.ndarray:
    """Random permutations of 9 lines that keep bands: permute the 3 bands and the lines within each."""
    bands = rng.random((n, 3)).argsort(1)  # [n, 3]
    within = rng.random((n, 3, 3)).argsort(2)  # [n, 3, 3]
    return (3 * bands[:, :, None] + within).reshape(n, 9)


def transform_grids(grids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply a random validity-preserving transform to each grid (digit relabelling, band / stack
    and line permutations within bands, transposition).

    Parameters
    ----------
    grids : ndarray ``[n, 81]``
        Valid grids, values 0..8.
    rng : numpy.random.Generator

    Returns
    -------
    ndarray
        ``[n, 81]`` int64, valid grids.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> bool(is_valid(transform_grids(seed_grids(3, rng), rng)).all())
    True
    """
    n = grids.shape[0]
    g = grids.reshape(n, 9, 9)
    g = np.where(rng.random(n)[:, None, None] < 0.5, g.transpose(0, 2, 1), g)
    rows, cols = _line_perm(n, rng), _line_perm(n, rng)
    idx = np.arange(n)[:, None, None]
    g = g[idx, rows[:, :, None], cols[:, None, :]]
    relabel = rng.random((n, 9)).argsort(1)  # [n, 9]
    return relabel[idx, g].reshape(n, CELLS)


def sample_grids(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Grids drawn from a pool of seed grids under random transforms.

    Parameters
    ----------
    pool : ndarray ``[P, 81]``
        Seed grids (:func:`seed_grids`).
    n : int
        Number of grids.
    rng : numpy.random.Generator

    Returns
    -------
    ndarray
        ``[n, 81]`` int64.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> sample_grids(seed_grids(4, rng), 10, rng).shape
    (10, 81)
    """
    return transform_grids(pool[rng.integers(len(pool), size=n)], rng)


def corrupt(solutions: np.ndarray, rng: np.random.Generator, count=(4, 20)) -> np.ndarray:
    """Change ``k ~ U{count[0]..count[1]}`` distinct cells of each grid to a different digit.

    Parameters
    ----------
    solutions : ndarray ``[n, 81]``
        Valid grids, values 0..8.
    rng : numpy.random.Generator
    count : (int, int)
        Inclusive range of the number of changed cells.

    Returns
    -------
    ndarray
        ``[n, 81]`` int64, the corrupted boards (no cell masked).

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> s = seed_grids(5, rng)
    >>> changed = (corrupt(s, rng) != s).sum(1)
    >>> bool(((changed >= 4) & (changed <= 20)).all())
    True
    """
    lo, hi = int(count[0]), int(count[1])
    if not 0 <= lo <= hi <= CELLS:
        raise ValueError(f"count must satisfy 0 <= lo <= hi <= 81, got {count}")
    n = solutions.shape[0]
    k = rng.integers(lo, hi + 1, size=n)  # [n]
    rank = rng.random((n, CELLS)).argsort(1).argsort(1)  # random rank of each cell
    chosen = rank < k[:, None]
    shifted = (solutions + rng.integers(1, DIGITS, size=solutions.shape)) % DIGITS
    return np.where(chosen, shifted, solutions)


def _as_tensor(boards) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(boards) if not isinstance(boards, torch.Tensor) else boards)
    if t.dim() != 2 or t.shape[1] != CELLS:
        raise ValueError(f"boards must be shaped [N, 81], got {tuple(t.shape)}")
    return t.to(torch.int64)


def conflict_cells(boards) -> torch.Tensor:
    """``[N, 81]`` bool: filled cells whose digit appears again in their row, column or box.

    ``boards`` holds ids 0..8 (digits) or ``MASK_ID``; masked cells are never conflicts.

    Parameters
    ----------
    boards : array-like ``[N, 81]`` or ``[81]``

    Returns
    -------
    Tensor
        ``[N, 81]`` bool.

    Example
    -------
    >>> b = seed_grids(1, np.random.default_rng(0)).copy()
    >>> b[0, 1] = b[0, 0]                                      # a repeated digit in row 0
    >>> int(conflict_cells(b).sum()) >= 2
    True
    """
    b = _as_tensor(boards)  # [N, 81]
    onehot = torch.nn.functional.one_hot(b, VOCAB_SIZE)[..., :DIGITS]  # [N, 81, 9]
    counts = onehot[:, torch.from_numpy(UNITS)].sum(2)  # [N, 27, 9]
    cell_units = torch.from_numpy(CELL_UNITS)  # [81, 3]
    digit = b.clamp(max=DIGITS - 1)  # [N, 81]
    per_unit = counts[:, cell_units].gather(3, digit[:, :, None, None].expand(-1, -1, 3, 1))  # [N, 81, 3, 1]
    return (per_unit.squeeze(3) > 1).any(2) & (b < DIGITS)


def is_valid(boards) -> torch.Tensor:
    """Whether each board is a valid complete grid.

    Parameters
    ----------
    boards : array-like ``[N, 81]`` or ``[81]``
        Ids 0..8 or ``MASK_ID``.

    Returns
    -------
    Tensor
        ``[N]`` bool: complete (no mask, all ids in 0..8) and no row / column / box repeats a digit.

    Example
    -------
    >>> is_valid(seed_grids(2, np.random.default_rng(0))).tolist()
    [True, True]
    """
    b = _as_tensor(boards)
    return ((b >= 0) & (b < DIGITS)).all(1) & ~conflict_cells(b.clamp(0, MASK_ID)).any(1)


_PAIRS = np.array([(a, b) for a in range(DIGITS) for b in range(a + 1, DIGITS)])  # [36, 2] digit pairs


def _pair_cycle_codes(g: np.ndarray) -> np.ndarray:
    """``[n, 36]`` sorted codes (18-byte records) of the two-digit cycles of grids ``g [n, 9, 9]``.

    For digits ``a < b`` the 18 cells holding them split into closed cycles (each row and each
    column holds one ``a`` and one ``b``). Every row of a cycle gets the code of its cycle: the
    sorted counts of the cycle's rows per band and of its columns per stack. Per pair the 9 codes
    are sorted, and the 36 pairs are sorted: the result does not depend on the order of the bands,
    of the rows within a band, of the stacks, of the columns within a stack, or on the digits' names.
    """
    n = g.shape[0]
    rows = np.arange(9)
    col_of = np.empty((n, 9, 9), np.int64)  # [n, digit, row] -> column
    row_of = np.empty((n, 9, 9), np.int64)  # [n, digit, column] -> row
    idx = np.arange(n)[:, None, None]
    col_of[idx, g, rows[None, :, None]] = rows[None, None, :]
    row_of[idx, g, rows[None, None, :]] = rows[None, :, None]
    a, b = _PAIRS[:, 0], _PAIRS[:, 1]
    ca = col_of[:, a]  # [n, 36, 9]: column of a in each row
    step = np.take_along_axis(row_of[:, b], ca, 2)  # row -> the row of b in that column: a permutation
    label = cur = np.broadcast_to(rows, step.shape)
    for _ in range(8):  # every row's cycle representative (its smallest row)
        cur = np.take_along_axis(step, cur, 2)
        label = np.minimum(label, cur)
    # per cycle (indexed by its label): its rows per band and its columns per stack
    slot = (np.arange(n * 36).reshape(n, 36, 1) * 9 + label) * 3  # [n, 36, 9]
    count = lambda third: np.bincount((slot + third).ravel(), minlength=n * 36 * 27).reshape(n, 36, 9, 3)  # noqa: E731
    band, stack = np.sort(count(rows // 3), -1), np.sort(count(ca // 3), -1)
    code = (band * np.array([16, 4, 1])).sum(-1) * 64 + (stack * np.array([16, 4, 1])).sum(-1)  # [n, 36, label]
    per_row = np.sort(np.take_along_axis(code, label, 2), 2).astype(">u2")  # [n, 36, 9], codes < 4096
    # sort the 36 pairs of each grid by their 9 codes (18 big-endian bytes: lexicographic order)
    return np.sort(np.ascontiguousarray(per_row).view(np.dtype((np.void, 18)))[..., 0], 1)  # [n, 36]


def grid_fingerprint(grids) -> list:
    """A symmetry-invariant fingerprint of each complete grid ``[n, 81]`` (values 0..8): equal for
    grids related by any validity-preserving transform (relabelled digits, permuted bands / rows
    within bands / stacks / columns within stacks, transposition), as ``bytes`` objects.

    It is an invariant, not a canonical form: two grids that are not transforms of each other could
    in principle share it (none of the thousands of generated seed grids tested do).
    """
    g = np.asarray(grids, dtype=np.int64).reshape(-1, 9, 9)
    if g.size and (g.min() < 0 or g.max() >= DIGITS):
        raise ValueError("grids must be complete: values 0..8")
    direct, transposed = _pair_cycle_codes(g), _pair_cycle_codes(g.transpose(0, 2, 1))
    return [min(x.tobytes(), y.tobytes()) for x, y in zip(direct, transposed)]


def grid_clusters(grids) -> np.ndarray:
    """``[n]`` int64 cluster ids: grids share an id when they share :func:`grid_fingerprint` (the
    boards of one seed grid, in any transform), numbered in order of first appearance."""
    ids: dict = {}
    return np.array([ids.setdefault(f, len(ids)) for f in grid_fingerprint(grids)], dtype=np.int64)


__all__ = [
    "CELLS", "CELL_UNITS", "DIGITS", "MASK_ID", "UNITS", "VOCAB_SIZE",
    "conflict_cells", "corrupt", "grid_clusters", "grid_fingerprint", "is_valid", "sample_grids", "seed_grids",
    "transform_grids",
]
