"""Sudoku board files and deterministic train/val/test splits.

File format: one board per line, ``<81 chars: corrupted board> <81 digits: solution>``, digits
``1``-``9``; in the corrupted board ``0`` or ``.`` marks an empty (masked) cell. Blank lines and
lines starting with ``#`` are skipped. Boards are returned as token ids (digit ``d`` -> ``d - 1``,
empty -> ``MASK_ID``).

Splits: every split draws its own pool of seed grids from an independent random stream
(``numpy.random.default_rng([seed, split_id])``), so the test boards come from seed grids that
training never sees, in any transform.
"""
from __future__ import annotations


import numpy as np

from rmkernels._utils import atomic_write
from rmkernels.tasks.sudoku.grids import CELLS, MASK_ID, corrupt, is_valid, sample_grids, seed_grids

SPLITS = {"train": 0, "val": 1, "test": 2}
DEFAULT_SEED = 1234
_TO_ID = {str(d): d - 1 for d in range(1, 10)}


def split_rng(split: str, seed: int = DEFAULT_SEED) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    return np.random.default_rng([int(seed), SPLITS[split]])


def make_boards(split: str, n: int, seed: int = DEFAULT_SEED, count=(4, 20), pool_size: int | None = None):
    """``n`` deterministic ``(corrupted, solution)`` boards ``[n, 81]`` int64 (ids 0..8) of a split.

    ``pool_size`` seed grids are drawn by backtracking (default: ``n``, one per board) and each
    board is a random transform of one of them with ``count`` cells corrupted.

    Parameters
    ----------
    split : {"train", "val", "test"}
        The split; each has its own seed grids.
    n : int
        Number of boards.
    seed : int
        Split seed (1234 for the shipped boards).
    count : (int, int)
        Inclusive range of corrupted cells per board.
    pool_size : int, optional
        Seed grids to draw boards from.

    Returns
    -------
    (ndarray, ndarray)
        ``corrupted``, ``solution``, each ``[n, 81]`` int64.

    Example
    -------
    >>> corrupted, solution = make_boards("val", 3, seed=7)
    >>> corrupted.shape, bool((corrupted != solution).any(1).all())
    ((3, 81), True)
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = split_rng(split, seed)
    pool = seed_grids(max(1, pool_size or n), rng)
    solution = sample_grids(pool, n, rng)
    return corrupt(solution, rng, count), solution


def _encode(s: str, allow_empty: bool) -> list:
    ids = []
    for ch in s:
        if ch in _TO_ID:
            ids.append(_TO_ID[ch])
        elif allow_empty and ch in "0.":
            ids.append(MASK_ID)
        else:
            return ch
    return ids


def parse_boards(lines, source: str = "<boards>"):
    """Parse board lines; returns ``(corrupted, solution)`` int64 arrays ``[N, 81]``.

    Raises ``ValueError`` naming ``source`` and the 1-based line number of the first bad line
    (field count, length, characters, a solution that is not a valid grid), or saying that the
    input holds no boards.

    Parameters
    ----------
    lines : iterable of str
        ``"<81 digits: board> <81 digits: solution>"`` per line (``0`` or ``.`` = masked cell in
        the board); blank lines and ``#`` comments are skipped.
    source : str
        Name used in error messages.

    Returns
    -------
    (ndarray, ndarray)
        ``corrupted``, ``solution``, each ``[N, 81]`` int64 token ids.

    Example
    -------
    >>> c, s = make_boards("test", 1, seed=3)
    >>> line = f"{format_board(c[0])} {format_board(s[0])}"
    >>> bool((parse_boards([line])[1] == s).all())
    True
    """
    boards, solutions, numbers = [], [], []
    for no, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(f"{source}:{no}: expected 2 fields '<81-char board> <81-digit solution>', got {len(fields)}")
        for name, field, allow_empty in (("board", fields[0], True), ("solution", fields[1], False)):
            if len(field) != CELLS:
                raise ValueError(f"{source}:{no}: {name} has {len(field)} characters, expected {CELLS}")
            ids = _encode(field, allow_empty)
            if not isinstance(ids, list):
                allowed = "1-9, 0 or '.'" if allow_empty else "1-9"
                raise ValueError(f"{source}:{no}: {name} holds the character {ids!r} (allowed: {allowed})")
            (boards if name == "board" else solutions).append(ids)
        numbers.append(no)
    if not boards:
        raise ValueError(f"{source}: no boards found (the file is empty or holds only blank/comment lines)")
    corrupted, solution = np.array(boards, np.int64), np.array(solutions, np.int64)
    bad = np.nonzero(~is_valid(solution).numpy())[0]
    if len(bad):
        raise ValueError(f"{source}:{numbers[bad[0]]}: solution is not a valid Sudoku grid (a row, column or box repeats a digit)")
    return corrupted, solution


def read_boards(path: str):
    """Read a board file (see :func:`parse_boards`); errors name the file and line.

    Parameters
    ----------
    path : str

    Returns
    -------
    (ndarray, ndarray)
        ``corrupted``, ``solution``, each ``[N, 81]`` int64.

    Example
    -------
    >>> from rmkernels.tasks.sudoku.assets import default_boards
    >>> read_boards(default_boards())[0].shape
    (1000, 81)
    """
    with open(path) as f:
        return parse_boards(f, source=str(path))


def format_board(ids) -> str:
    """81 characters: digits 1-9, ``0`` for a masked cell."""
    return "".join("0" if int(v) == MASK_ID else str(int(v) + 1) for v in ids)


def write_lines(path: str, lines) -> None:
    """Write text lines atomically (:func:`rmkernels._utils.atomic_write`)."""
    atomic_write(path, "".join(line + "\n" for line in lines))


def write_boards(path: str, corrupted, solution) -> None:
    """Write boards atomically, one ``"<board> <solution>"`` line each (read back by :func:`read_boards`).

    Parameters
    ----------
    path : str
    corrupted, solution : array-like ``[N, 81]``
        Token ids.

    Returns
    -------
    None

    Example
    -------
    >>> write_boards("boards.txt", *make_boards("val", 10))  # doctest: +SKIP
    """
    write_lines(path, (f"{format_board(c)} {format_board(s)}" for c, s in zip(corrupted, solution)))


__all__ = [
    "DEFAULT_SEED", "SPLITS", "format_board", "make_boards", "parse_boards", "read_boards",
    "split_rng", "write_boards", "write_lines",
]
