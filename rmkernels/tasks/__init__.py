"""Tasks built on the RM decoder and trainer (Sudoku revision)."""
