"""Sudoku revision (docs/spec.md §5): grids, corrupted boards, board files, metrics, training and evaluation.

Token ids: 0..8 are the digits 1..9, ``MASK_ID = 9`` (vocabulary size 10).
"""
from rmkernels.tasks.sudoku.data import make_boards, parse_boards, read_boards, write_boards
from rmkernels.tasks.sudoku.grids import (
    MASK_ID,
    VOCAB_SIZE,
    conflict_cells,
    corrupt,
    is_valid,
    sample_grids,
    seed_grids,
    transform_grids,
)

__all__ = [
    "MASK_ID",
    "VOCAB_SIZE",
    "conflict_cells",
    "corrupt",
    "is_valid",
    "make_boards",
    "parse_boards",
    "read_boards",
    "sample_grids",
    "seed_grids",
    "transform_grids",
    "write_boards",
]
