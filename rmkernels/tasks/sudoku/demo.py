"""``rmk sudoku demo``: one corrupted board revised step by step in the terminal.

Each frame of the decoding trajectory is drawn as a 9x9 grid: ``_`` marks a masked cell, and
(with colour) cells re-masked this step are yellow, cells revealed this step are green when right
and red when wrong, and wrong visible cells are red.
"""
from __future__ import annotations

import sys
import time

import torch

from rmkernels.tasks.sudoku.grids import MASK_ID, conflict_cells

_COLORS = {"remasked": "\033[30;43m", "right": "\033[30;42m", "wrong": "\033[97;41m", "reset": "\033[0m"}


def _cell(v: int, prev, sol: int, color: bool) -> str:
    ch = "_" if v == MASK_ID else str(v + 1)
    if prev is not None and v == MASK_ID and prev != MASK_ID:
        kind, marker = "remasked", "~"
    elif v != MASK_ID and v != sol:
        kind, marker = "wrong", "!"
    elif prev is not None and prev == MASK_ID and v != MASK_ID:
        kind, marker = "right", "+"
    else:
        kind, marker = None, " "
    if not color:
        return ch + marker
    return f"{_COLORS[kind]}{ch}{_COLORS['reset']}" if kind else ch


def render_frame(frame, prev, solution, color: bool = True) -> str:
    """A 9x9 grid of ``frame [81]`` (ids), marking changes since ``prev`` (or ``None``) and errors."""
    f, s = [int(v) for v in frame], [int(v) for v in solution]
    p = None if prev is None else [int(v) for v in prev]
    width = 3 * (1 if color else 2) + 2  # visible characters of one box row
    lines = []
    for r in range(9):
        if r and r % 3 == 0:
            lines.append("-+-".join(["-" * width] * 3))
        boxes = [" ".join(_cell(f[9 * r + c], None if p is None else p[9 * r + c], s[9 * r + c], color)
                          for c in range(b, b + 3)) for b in (0, 3, 6)]
        lines.append(" | ".join(boxes))
    return "\n".join(lines)


def frame_summary(frame, prev, solution) -> str:
    f, s = torch.as_tensor(frame), torch.as_tensor(solution)
    wrong = int(((f != s) & (f != MASK_ID)).sum())
    masked = int((f == MASK_ID).sum())
    conflicts = int(conflict_cells(f[None]).sum())
    parts = [f"wrong {wrong}", f"masked {masked}", f"conflict cells {conflicts}"]
    if prev is not None:
        p = torch.as_tensor(prev)
        parts += [f"re-masked {int(((p != MASK_ID) & (f == MASK_ID)).sum())}",
                  f"revealed {int(((p == MASK_ID) & (f != MASK_ID)).sum())}"]
    return ", ".join(parts)


def run_demo(trajectory, solution, *, delay: float = 0.7, color: bool | None = None, out=None, title: str = "") -> None:
    """Print every frame of one board's trajectory ``[T + 1, 81]`` (repeated final frames are dropped)."""
    out = out or sys.stdout
    color = out.isatty() if color is None else color
    frames = [trajectory[0]]
    for f in trajectory[1:]:
        if not torch.equal(f, frames[-1]):
            frames.append(f)
    if title:
        print(title, file=out)
    if color:
        print(f"legend: {_COLORS['remasked']}re-masked{_COLORS['reset']} {_COLORS['right']}revealed, right"
              f"{_COLORS['reset']} {_COLORS['wrong']}wrong{_COLORS['reset']}", file=out)
    else:
        print("legend: ~ re-masked, + revealed (right), ! wrong, _ masked", file=out)
    prev = None
    for t, f in enumerate(frames):
        head = "corrupted board" if t == 0 else f"after change {t}"
        print(f"\n{head}: {frame_summary(f, prev, solution)}", file=out)
        print(render_frame(f, prev, solution, color), file=out)
        out.flush()
        prev = f
        if delay > 0 and t + 1 < len(frames):
            time.sleep(delay)
    done = bool(torch.equal(torch.as_tensor(frames[-1]), torch.as_tensor(solution)))
    print(f"\n{'solved: the board equals the solution' if done else 'not solved'}", file=out)


__all__ = ["frame_summary", "render_frame", "run_demo"]
