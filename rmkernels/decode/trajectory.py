"""Decoding trajectories and the statistics taken from them.

A trajectory is a tensor ``[T + 1, B, L]`` of canvases: entry 0 is the starting canvas and entry
``t`` the canvas after step ``t`` (rows that finished early repeat their final canvas).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def trajectory_events(trajectory: torch.Tensor, mask_id: int):
    """Where each step revealed and re-masked.

    Parameters
    ----------
    trajectory : Tensor ``[T + 1, B, L]``
        Canvases (``DecodeOutput.trajectory``).
    mask_id : int
        The mask token id.

    Returns
    -------
    (Tensor, Tensor)
        ``revealed``, ``remasked``, each bool ``[T, B, L]``: at step ``t`` a position went
        ``M -> token`` / ``token -> M``.

    Example
    -------
    >>> traj = torch.tensor([[[9, 1]], [[3, 9]], [[3, 1]]])    # [T + 1 = 3, B = 1, L = 2], mask 9
    >>> revealed, remasked = trajectory_events(traj, 9)
    >>> revealed[:, 0].tolist(), remasked[:, 0].tolist()
    ([[True, False], [False, True]], [[False, True], [False, False]])
    """
    prev, cur = trajectory[:-1], trajectory[1:]
    revealed = (prev == mask_id) & (cur != mask_id)
    remasked = (prev != mask_id) & (cur == mask_id)
    return revealed, remasked


@dataclass
class ReplayStats:
    """Per-row event counts of a decoding trajectory (:func:`replay_statistics`)."""

    reveals: torch.Tensor  # [B] int64: reveals per row
    remasks: torch.Tensor  # [B] int64: re-masks per row
    replays: torch.Tensor  # [B] int64: reveals that put back a value earlier re-masked at that cell

    @property
    def replay_rate(self) -> float:
        """Share of all reveals (over the batch) that are replays."""
        return float(self.replays.sum()) / max(int(self.reveals.sum()), 1)


def replay_statistics(trajectory: torch.Tensor, mask_id: int) -> ReplayStats:
    """Count reveals, re-masks and replays (docs/spec.md §5) per row of a trajectory ``[T + 1, B, L]``.

    A replay is a reveal at a cell of a value that was re-masked at that same cell at an earlier
    step: the decoder repeating a mistake it had already withdrawn.

    Parameters
    ----------
    trajectory : Tensor ``[T + 1, B, L]``
        Canvases (``DecodeOutput.trajectory``).
    mask_id : int
        The mask token id.

    Returns
    -------
    ReplayStats
        ``reveals``, ``remasks``, ``replays`` per row (int64 ``[B]``) and ``replay_rate``.

    Example
    -------
    >>> traj = torch.tensor([[[1]], [[9]], [[1]]])            # 1 -> M -> 1 at one cell, mask 9
    >>> replay_statistics(traj, 9).replay_rate
    1.0
    """
    traj = trajectory.to(torch.int64)
    T1, B, L = traj.shape
    revealed, remasked = trajectory_events(traj, mask_id)
    V = int(traj.max()) + 1 if traj.numel() else 1
    cell = torch.arange(B * L, device=traj.device).view(B, L)
    withdrawn = torch.empty(0, dtype=torch.int64, device=traj.device)  # codes (cell * V + value)
    replays = torch.zeros(B, dtype=torch.int64, device=traj.device)
    for t in range(T1 - 1):
        rev = revealed[t]
        if rev.any():
            codes = cell[rev] * V + traj[t + 1][rev]
            hit = torch.isin(codes, withdrawn)
            replays += torch.zeros(B * L, dtype=torch.int64, device=traj.device).index_put(
                (cell[rev],), hit.to(torch.int64)
            ).view(B, L).sum(1)
        rem = remasked[t]
        if rem.any():
            withdrawn = torch.cat([withdrawn, cell[rem] * V + traj[t][rem]])
    return ReplayStats(revealed.sum((0, 2)), remasked.sum((0, 2)), replays)
