"""Sudoku revision metrics (docs/spec.md §5) and their markdown table.

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

import math

import torch

from rmkernels.decode.trajectory import replay_statistics
from rmkernels.tasks.common import verdict
from rmkernels.tasks.sudoku.grids import MASK_ID, conflict_cells, grid_clusters, is_valid

COLUMNS = (
    ("exact_pct", "exact %", "{:.1f}"),
    ("valid_pct", "valid %", "{:.1f}"),
    ("replay_pct", "replay mistake %", "{:.2f}"),
    ("wrong_replay_pct", "wrong-digit replay %", "{:.2f}"),
    ("conflicts_per_board", "conflict cells / board", "{:.3f}"),
    ("mean_steps", "mean steps", "{:.2f}"),
    ("other_grid_no_farther_pct", "other grid, no farther %", "{:.1f}"),
)


def hide_correct(traj: torch.Tensor, solution: torch.Tensor) -> torch.Tensor:
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
        out["wrong_replay_pct"] = 100.0 * replay_statistics(hide_correct(traj, solution), MASK_ID).replay_rate
        out["reveals_per_board"] = float(stats.reveals.sum()) / n
        out["remasks_per_board"] = float(stats.remasks.sum()) / n
    return out


def markdown_table(rows: dict) -> str:
    """``{name: metrics}`` -> a markdown table with the docs/spec.md §5 columns plus mean steps."""
    lines = ["| variant | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for name, m in rows.items():
        cells = ["-" if m.get(key) is None else fmt.format(m[key]) for key, _, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# the published ablation ordering (docs/spec.md §5, issue 6): RM < RM + history <= full, on exact %
ORDERING = (("rm", "rm_hist", "<"), ("rm_hist", "full", "<="))


def cluster_robust_se(values, clusters) -> float:
    """Standard error of the mean of ``values [N]`` when observations of one cluster may be
    correlated (boards made from the same seed grid): with ``e_g`` the sum of the residuals
    ``values - mean`` over cluster ``g`` and ``G`` clusters,

        SE = sqrt(G / (G - 1) * sum_g e_g**2) / N.

    With every observation its own cluster this is the usual ``std(ddof=1) / sqrt(N)``.

    Example
    -------
    >>> cluster_robust_se([1, 1, 0, 0, 1, 0], [0, 0, 1, 1, 1, 2])  # e = (1, -0.5, -0.5)
    0.25
    """
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    g = torch.as_tensor(clusters).long().reshape(-1)
    if g.shape != v.shape:
        raise ValueError(f"clusters {tuple(g.shape)} must have the shape of values {tuple(v.shape)}")
    _, g = torch.unique(g, return_inverse=True)
    G = int(g.max()) + 1 if g.numel() else 0
    if G < 2:
        raise ValueError(f"a cluster-robust standard error needs at least 2 clusters, got {G}")
    e = torch.zeros(G, dtype=torch.float64).index_add_(0, g, v - v.mean())
    return math.sqrt(G / (G - 1) * float((e**2).sum())) / v.numel()


def paired_difference(final_a, final_b, solution, clusters=None) -> dict:
    """System b minus system a on the same boards ``[N, 81]``: exact % and conflict cells per
    board, each with the standard error of the mean per-board difference, and how many boards
    only a / only b solve.

    Boards made from one seed grid are not independent samples, so the standard errors are
    cluster-robust (:func:`cluster_robust_se`) over ``clusters [N]`` (default: the boards'
    seed-grid clusters, :func:`rmkernels.tasks.sudoku.grids.grid_clusters` of the solutions).
    """
    a, b, sol = (torch.as_tensor(x).long() for x in (final_a, final_b, solution))
    if not a.shape == b.shape == sol.shape:
        raise ValueError(f"final_a {tuple(a.shape)}, final_b {tuple(b.shape)} and solution {tuple(sol.shape)} "
                         "must have the same shape")
    n = a.shape[0]
    if n < 2:
        raise ValueError(f"a paired standard error needs at least 2 boards, got {n}")
    clusters = grid_clusters(sol.numpy()) if clusters is None else clusters
    d_exact = (b == sol).all(1).double() - (a == sol).all(1).double()  # [N] in {-1, 0, 1}
    d_conf = conflict_cells(b).sum(1).double() - conflict_cells(a).sum(1).double()  # [N]
    se = lambda d: cluster_robust_se(d, clusters)  # noqa: E731
    return {"boards": n, "clusters": len(set(torch.as_tensor(clusters).tolist())),
            "exact_diff_pct": 100.0 * float(d_exact.mean()), "exact_diff_se_pct": 100.0 * se(d_exact),
            "only_a_exact": int((d_exact < 0).sum()), "only_b_exact": int((d_exact > 0).sum()),
            "conflicts_diff": float(d_conf.mean()), "conflicts_diff_se": se(d_conf)}


def ablation_ordering(finals: dict, solution, z: float = 2.0, clusters=None) -> list:
    """The published ordering's relations (``ORDERING``) between the systems in ``finals``
    (``{name: final boards [N, 81]}``), each a :func:`paired_difference` (b minus a) with a verdict
    on exact: ``holds`` (b ahead by more than ``z`` cluster-robust SE), ``reversed`` (behind by
    more), else unresolved (``<``) or not contradicted (``<=``). ``clusters`` as in
    :func:`paired_difference` (computed once here when ``None``)."""
    out = []
    if clusters is None and any(a in finals and b in finals for a, b, _ in ORDERING):
        clusters = grid_clusters(torch.as_tensor(solution).numpy())
    for a, b, relation in ORDERING:
        if a in finals and b in finals:
            d = paired_difference(finals[a], finals[b], solution, clusters)
            d.update(a=a, b=b, relation=relation, verdict=verdict(d["exact_diff_pct"], d["exact_diff_se_pct"], relation, z))
            out.append(d)
    return out


def ordering_table(relations: list, titles: dict | None = None) -> str:
    """:func:`ablation_ordering` as a markdown table."""
    t = titles or {}
    lines = ["| published relation (exact) | exact difference, points (SE) | boards only the left / right "
             "solves | conflict cells / board difference (SE) | verdict |", "|---|---|---|---|---|"]
    for r in relations:
        lines.append(f"| {t.get(r['a'], r['a'])} {r['relation']} {t.get(r['b'], r['b'])} | "
                     f"{r['exact_diff_pct']:+.1f} ({r['exact_diff_se_pct']:.1f}) | {r['only_a_exact']} / "
                     f"{r['only_b_exact']} | {r['conflicts_diff']:+.3f} ({r['conflicts_diff_se']:.3f}) | {r['verdict']} |")
    return "\n".join(lines)


__all__ = ["COLUMNS", "ORDERING", "ablation_ordering", "board_metrics", "cluster_robust_se", "markdown_table",
           "ordering_table", "paired_difference"]
