"""A terminal view of a decoding trajectory: tokens appearing, re-masked and revealed, step by step."""
from __future__ import annotations

import sys

import torch

from rmkernels.decode.trajectory import replay_statistics

_STYLE = {"revealed": "\033[30;42m", "remasked": "\033[30;43m", "replay": "\033[97;41m", "reset": "\033[0m"}
_MARK = {"revealed": "+", "remasked": "~", "replay": "!"}


def render_trajectory(
    trajectory: torch.Tensor,  # [T + 1, B, L]
    mask_id: int,
    row: int = 0,
    *,
    decode=None,
    gen_mask: torch.Tensor | None = None,  # [B, L] bool: show only these positions
    color: bool | None = None,
    mask_str: str = "_",
) -> str:
    """One line per step for ``row``: each token via ``decode(id) -> str`` (default: the id).

    Positions revealed at that step are green (``+`` without colour), re-masked ones yellow (``~``),
    and replays (a reveal that puts back a value withdrawn earlier at that cell) red (``!``).
    The last line holds the row's replay statistics.
    """
    color = sys.stdout.isatty() if color is None else color
    decode = decode or str
    traj = trajectory[:, row].tolist()  # [T + 1][L]
    keep = range(len(traj[0])) if gen_mask is None else [i for i, g in enumerate(gen_mask[row].tolist()) if g]
    withdrawn = [set() for _ in traj[0]]
    width = len(str(len(traj) - 1))
    lines = []
    for t, state in enumerate(traj):
        prev = traj[t - 1] if t else None
        cells = []
        for i in keep:
            v = state[i]
            kind = None
            if prev is not None and prev[i] != mask_id and v == mask_id:
                kind = "remasked"
                withdrawn[i].add(prev[i])
            elif prev is not None and prev[i] == mask_id and v != mask_id:
                kind = "replay" if v in withdrawn[i] else "revealed"
            text = mask_str if v == mask_id else decode(v)
            if kind and color:
                text = f"{_STYLE[kind]}{text}{_STYLE['reset']}"
            elif kind:
                text = text + _MARK[kind]
            cells.append(text)
        lines.append(f"step {t:>{width}} | " + " ".join(cells))
    stats = replay_statistics(trajectory[:, row : row + 1], mask_id)
    lines.append(f"reveals {int(stats.reveals[0])}, re-masks {int(stats.remasks[0])}, "
                 f"replays {int(stats.replays[0])} ({100 * stats.replay_rate:.2f}% of reveals)")
    return "\n".join(lines)
