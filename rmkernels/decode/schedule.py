"""Unmasking schedules of the two-phase editing decode (docs/spec.md §10).

A schedule fixes how many of the ``n`` positions that are masked when a block's unmasking starts
are still masked after step ``t`` of ``T``:

* ``"cosine"`` (MaskGIT): ``ceil(n * cos(pi / 2 * t / T))``;
* ``"linear"``: ``ceil(n * (1 - t / T))`` (computed in integers, exactly).

Both give ``n`` at ``t = 0`` and ``0`` for ``t >= T``. The decoder reveals, at each step, the
masked positions in excess of the next target (at least one), so re-masks made by the RM rule on
the way are caught up by later steps. The reference loop and the fast path call this one function
with the same tensors, so they count alike by construction.
"""
from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "cosine")
_EPS = 1e-9  # absorbs float64 rounding where n * cos(.) is an exact integer (e.g. cos(pi / 3) = 0.5)


def masked_after(n, t, T, kind: str) -> torch.Tensor:
    """Positions still masked after step ``t`` of a ``T``-step schedule that starts with ``n`` masked.

    Parameters
    ----------
    n, t, T : int or int64 tensors (broadcast together)
        Masked positions at the start, the step (``0 .. T``; larger counts as ``T``) and the
        schedule length (``>= 1``).
    kind : {"linear", "cosine"}

    Returns
    -------
    int64 tensor
        The target count, in ``[0, n]``, non-increasing in ``t``.

    Example
    -------
    >>> masked_after(10, torch.arange(5), 4, "cosine").tolist()
    [10, 10, 8, 4, 0]
    """
    if kind not in SCHEDULES:
        raise ValueError(f"kind must be one of {SCHEDULES}, got {kind!r}")
    n, t, T = (torch.as_tensor(v, dtype=torch.int64) for v in (n, t, T))
    t = torch.minimum(t, T)  # a step past the schedule's end: nothing left masked
    if kind == "linear":
        return torch.div(n * (T - t) + T - 1, T, rounding_mode="floor")
    f = torch.cos((math.pi / 2) * (t.double() / T.double()))
    m = torch.ceil(n.double() * f - _EPS).clamp(min=0).long()
    return torch.where(t >= T, 0, m)


def reveal_count(masked_now, n, t, T, kind: str) -> torch.Tensor:
    """Reveals of step ``t`` (0-based) of a block: the masked positions above the target after
    it, at least one: ``max(masked_now - masked_after(n, t + 1, T), 1)``."""
    masked_now = torch.as_tensor(masked_now, dtype=torch.int64)
    return (masked_now - masked_after(n, torch.as_tensor(t, dtype=torch.int64) + 1, T, kind)).clamp(min=1)


__all__ = ["SCHEDULES", "masked_after", "reveal_count"]
