"""Sudoku revision metrics (SPEC §5) and their markdown table.

* exact %: the final board equals the solution;
* valid %: the final board is complete and breaks no row/column/box rule;
* replay mistake %: reveals that put back, at a cell, a value earlier re-masked at that cell, as a
  share of all reveals (:func:`rmkernels.decode.trajectory.replay_statistics`); this counts a
  correct digit that was re-masked and revealed again, so ``wrong_replay_pct`` also gives the
  share of reveals that repeat a withdrawn *wrong* digit;
* conflict cells / board: filled cells whose digit repeats in their row, column or box;
* mean steps: decoding steps until each board reached its fixed point (or the budget);
* with the input boards: ``other_grid_pct``, final boards that are valid grids other than the
  solution, and ``other_grid_no_farther_pct``, those among them that differ from the input board in
  no more cells than the solution does. A corrupted board does not always determine its solution:
  such a final grid explains the input at least as well as the solution, so no reviser can be
  expected to pick the solution there (a lower bound on the board set's ambiguity).
"""
from __future__ import annotations

import torch

from rmkernels.decode.trajectory import replay_statistics
from rmkernels.tasks.sudoku.grids import MASK_ID, conflict_cells, is_valid

COLUMNS = (
    ("exact_pct", "exact %", "{:.1f}"),
    ("valid_pct", "valid %", "{:.1f}"),
    ("replay_pct", "replay mistake %", "{:.2f}"),
    ("wrong_replay_pct", "wrong-digit replay %", "{:.2f}"),
    ("conflicts_per_board", "conflict cells / board", "{:.3f}"),
    ("mean_steps", "mean steps", "{:.2f}"),
    ("other_grid_no_farther_pct", "other grid, no farther %", "{:.1f}"),
)


def _hide_correct(traj: torch.Tensor, solution: torch.Tensor) -> torch.Tensor:
    """``traj [T + 1, N, 81]`` with each correct digit replaced by an id unique to its step
    (``MASK_ID + 1 + t``), so replays of correct digits no longer match and only wrong ones count."""
    steps = torch.arange(traj.shape[0], device=traj.device)[:, None, None]
    return torch.where((traj == solution[None]) & (traj != MASK_ID), MASK_ID + 1 + steps, traj)


def board_metrics(final, solution, steps=None, trajectory=None, inputs=None) -> dict:
    """Metrics of final boards ``[N, 81]`` against solutions ``[N, 81]`` (token ids).

    ``steps [N]`` gives ``mean_steps``; ``trajectory [T + 1, N, 81]`` gives the replay statistics
    (``replay_pct``, ``reveals`` and ``remasks`` per board); ``inputs [N, 81]`` (the corrupted
    boards) gives the other-grid shares. Missing inputs give ``None`` entries.
    """
    final, solution = torch.as_tensor(final).long(), torch.as_tensor(solution).long()
    if final.shape != solution.shape:
        raise ValueError(f"final {tuple(final.shape)} and solution {tuple(solution.shape)} must have the same shape")
    n = max(final.shape[0], 1)
    exact, valid = (final == solution).all(1), is_valid(final)  # [N] each
    out = {
        "boards": final.shape[0],
        "exact_pct": 100.0 * float(exact.sum()) / n,
        "valid_pct": 100.0 * float(valid.sum()) / n,
        "conflicts_per_board": float(conflict_cells(final).sum()) / n,
        "masked_per_board": float((final == MASK_ID).sum()) / n,
        "mean_steps": None if steps is None else float(torch.as_tensor(steps).double().mean()),
        "replay_pct": None,
        "wrong_replay_pct": None,
        "reveals_per_board": None,
        "remasks_per_board": None,
        "other_grid_pct": None,
        "other_grid_no_farther_pct": None,
    }
    if inputs is not None:
        inputs = torch.as_tensor(inputs).long()
        if inputs.shape != final.shape:
            raise ValueError(f"inputs {tuple(inputs.shape)} must have the shape of final {tuple(final.shape)}")
        other = valid & ~exact  # [N]
        no_farther = (final != inputs).sum(1) <= (solution != inputs).sum(1)
        out["other_grid_pct"] = 100.0 * float(other.sum()) / n
        out["other_grid_no_farther_pct"] = 100.0 * float((other & no_farther).sum()) / n
    if trajectory is not None:
        traj = torch.as_tensor(trajectory).long()
        stats = replay_statistics(traj, MASK_ID)
        out["replay_pct"] = 100.0 * stats.replay_rate
        out["wrong_replay_pct"] = 100.0 * replay_statistics(_hide_correct(traj, solution), MASK_ID).replay_rate
        out["reveals_per_board"] = float(stats.reveals.sum()) / n
        out["remasks_per_board"] = float(stats.remasks.sum()) / n
    return out


def markdown_table(rows: dict) -> str:
    """``{name: metrics}`` -> a markdown table with the SPEC §5 columns plus mean steps."""
    lines = ["| variant | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for name, m in rows.items():
        cells = ["-" if m.get(key) is None else fmt.format(m[key]) for key, _, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["COLUMNS", "board_metrics", "markdown_table"]
