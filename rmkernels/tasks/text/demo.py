"""``rmk text demo``: one expression decoded step by step in the terminal.

Each step prints the generation window as text: ``_`` marks a masked position; with colour,
positions revealed this step are green when they match the gold work and red when not, positions
re-masked this step are yellow; without colour a marker line below the text shows ``+`` (revealed,
right), ``!`` (revealed, wrong), ``~`` (re-masked). ``<eos>`` shows as ``$`` and padding as ``.``.
"""
from __future__ import annotations

import sys
import time

import torch

from rmkernels.tasks.text.problems import parse_answer
from rmkernels.tasks.text.tokenizer import CHARS, EOS_ID, MASK_ID, PAD_ID

_COLORS = {"remasked": "\033[30;43m", "right": "\033[30;42m", "wrong": "\033[97;41m", "reset": "\033[0m"}


def _char(i: int) -> str:
    return "_" if i == MASK_ID else "$" if i == EOS_ID else "." if i == PAD_ID else CHARS[i]


def render_step(cur, prev, gold, color: bool) -> str:
    """The window ``cur`` (ids) with this step's reveals and re-masks marked against ``prev``."""
    text, marks = [], []
    for c, p, g in zip(cur, prev, gold):
        kind = None
        if p != MASK_ID and c == MASK_ID:
            kind = "remasked"
        elif p == MASK_ID and c != MASK_ID:
            kind = "right" if c == g else "wrong"
        ch = _char(c)
        text.append(f"{_COLORS[kind]}{ch}{_COLORS['reset']}" if color and kind else ch)
        marks.append({"remasked": "~", "right": "+", "wrong": "!"}.get(kind, " "))
    return "".join(text) if color else "".join(text) + "\n" + "".join(marks).rstrip()


def run_demo(expression: str, trajectory, gold, *, delay: float = 0.3, color: bool | None = None, out=None,
             title: str = "") -> str:
    """Print every step of one window's trajectory ``[T + 1, G]``; returns the graded answer."""
    from rmkernels.tasks.text.evaluate import window_text

    out = out or sys.stdout
    color = out.isatty() if color is None else color
    traj = [[int(v) for v in f] for f in torch.as_tensor(trajectory).tolist()]
    gold = [int(v) for v in gold]
    frames = [traj[0]] + [f for i, f in enumerate(traj[1:]) if f != traj[i]]
    if title:
        print(title, file=out)
    legend = (f"{_COLORS['right']}revealed, right{_COLORS['reset']} {_COLORS['wrong']}revealed, wrong{_COLORS['reset']} "
              f"{_COLORS['remasked']}re-masked{_COLORS['reset']}" if color
              else "+ revealed (right), ! revealed (wrong), ~ re-masked")
    print(f"legend: {legend}; _ masked, $ <eos>, . padding\n", file=out)
    prompt = expression + "="
    for t in range(1, len(frames)):
        cur, prev = frames[t], frames[t - 1]
        rev = sum(p == MASK_ID and c != MASK_ID for c, p in zip(cur, prev))
        rem = sum(p != MASK_ID and c == MASK_ID for c, p in zip(cur, prev))
        body = render_step(cur, prev, gold, color)
        lines = body.split("\n")
        print(f"step {t:3d} (+{rev} revealed, {rem} re-masked)", file=out)
        print(prompt + lines[0], file=out)
        if len(lines) > 1 and lines[1]:
            print(" " * len(prompt) + lines[1], file=out)
        out.flush()
        if delay > 0 and t + 1 < len(frames):
            time.sleep(delay)
    answer = parse_answer(window_text(frames[-1]))
    truth = parse_answer(window_text(gold))
    verdict = "correct" if answer == truth else f"wrong (the value is {truth})"
    print(f"\nanswer: {answer or '(none parsed)'}: {verdict}; {len(traj) - 1} model calls", file=out)
    return answer


__all__ = ["render_step", "run_demo"]
