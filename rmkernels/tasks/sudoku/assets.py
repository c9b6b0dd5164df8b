"""The Sudoku task's packaged files, found through :mod:`importlib.resources`.

``assets/checkpoints/sudoku_<name>.safetensors`` (+ ``.json``): the shipped base MDM and the four RM
variants (docs/sudoku.md). ``assets/data/sudoku_test.txt``: the 1000 held-out test boards;
``assets/data/sudoku_test_ceiling.json``: their exact-rate ceiling (``rmk sudoku ceiling --json``).
Nothing else in the package names these paths.
"""
from __future__ import annotations

from importlib.resources import files

__all__ = ["asset_path", "checkpoint_dir", "default_boards", "default_ceiling"]


def asset_path(*parts: str) -> str:
    """The file path of ``assets/<parts...>`` inside the installed package.

    Parameters
    ----------
    *parts : str
        Path components below ``rmkernels/tasks/sudoku/assets/``.

    Returns
    -------
    str
        A filesystem path (the package is installed as files, editable or not).

    Example
    -------
    >>> asset_path("data", "sudoku_test.txt").endswith("sudoku_test.txt")
    True
    """
    return str(files(__package__).joinpath("assets", *parts))


def checkpoint_dir() -> str:
    """Folder of the shipped ``sudoku_<name>.safetensors`` checkpoints.

    Returns
    -------
    str
        A filesystem path inside the installed package (:func:`asset_path`).

    Example
    -------
    >>> import os
    >>> os.path.exists(checkpoint_dir())
    True
    """
    return asset_path("checkpoints")


def default_boards() -> str:
    """The shipped 1000 test boards (``rmk sudoku make-boards --split test --seed 1234 --n 1000``).

    Returns
    -------
    str
        A filesystem path inside the installed package (:func:`asset_path`).

    Example
    -------
    >>> import os
    >>> os.path.exists(default_boards())
    True
    """
    return asset_path("data", "sudoku_test.txt")


def default_ceiling() -> str:
    """``rmk sudoku ceiling --json`` of :func:`default_boards` (eval reports exact % against it).

    Returns
    -------
    str
        A filesystem path inside the installed package (:func:`asset_path`).

    Example
    -------
    >>> import os
    >>> os.path.exists(default_ceiling())
    True
    """
    return asset_path("data", "sudoku_test_ceiling.json")
