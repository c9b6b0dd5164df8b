"""Metrics of the arithmetic task (SPEC §5 applied to text) and their tables.

Per system (a checkpoint decoded with one sampler at ``K`` tokens per model call):

* answer accuracy %: the graded integer (:func:`rmkernels.tasks.text.problems.parse_answer` of the
  generation up to ``<eos>``) equals the problem's value; a generation without a parsable answer
  counts as wrong;
* parsed %: generations with a parsable answer;
* work exact %: the whole generation window equals the gold one (work, ``<eos>``, padding);
* consistent %: the work is well formed and every copy in it is right (the prompt's operands and
  operators, each step's left operand = the previous result, the answer = the last result), its
  arithmetic right or not (:func:`rmkernels.tasks.text.problems.consistent_work`): the errors
  parallel decoding adds, apart from the model's arithmetic;
* replay %: reveals that put back, at a position, the token earlier re-masked there, as a share
  of all reveals in the generation windows (:func:`rmkernels.decode.trajectory.replay_statistics`);
* re-masks per problem; mean model calls per problem (the decoder's per-row steps: forward
  passes that row needed, the final no-change check included when the budget allows it).

Paired comparisons (:func:`paired_accuracy`): the accuracy difference of two systems on the same
problems with the standard error of the per-problem differences, and a verdict on the published
ordering (:data:`ORDERING`) at each ``K``.
"""
from __future__ import annotations

import math

import torch

from rmkernels.tasks.common import paired_stats, verdict

COLUMNS = (
    ("accuracy_pct", "answer accuracy %", "{:.1f}"),
    ("parsed_pct", "parsed %", "{:.1f}"),
    ("work_exact_pct", "work exact %", "{:.1f}"),
    ("consistent_pct", "consistent %", "{:.1f}"),
    ("replay_pct", "replay %", "{:.2f}"),
    ("remasks_per_problem", "re-masks / problem", "{:.2f}"),
    ("mean_calls", "model calls / problem", "{:.2f}"),
    ("seconds", "wall s", "{:.1f}"),
)
# the published ordering: low-confidence decoding < RM < RM + HER (no rotation) <= full, on accuracy
ORDERING = (("base_lc", "rm", "<"), ("rm", "rm_hist", "<"), ("rm_hist", "full", "<="))


def correct_mask(answers, values) -> torch.Tensor:
    """``[N]`` bool: answer string ``answers[i]`` is the integer ``values[i]`` (empty = wrong)."""
    if len(answers) != len(values):
        raise ValueError(f"answers ({len(answers)}) and values ({len(values)}) differ in length")
    return torch.tensor([a != "" and int(a) == int(v) for a, v in zip(answers, values)], dtype=torch.bool)


def problem_metrics(answers, values, windows, gold_windows, calls, reveals, remasks, replays, consistent=None) -> dict:
    """Aggregate metrics of one system (see the module docstring).

    ``windows``/``gold_windows`` ``[N, G]`` generated and gold ids; ``calls``, ``reveals``,
    ``remasks``, ``replays`` ``[N]`` per-problem counts; ``consistent`` ``[N]`` bool (optional).
    """
    n = max(len(values), 1)
    correct = correct_mask(answers, values)
    reveals, remasks, replays = (torch.as_tensor(t).long() for t in (reveals, remasks, replays))
    return {
        "problems": len(values),
        "accuracy_pct": 100.0 * float(correct.sum()) / n,
        "parsed_pct": 100.0 * sum(a != "" for a in answers) / n,
        "work_exact_pct": 100.0 * float((torch.as_tensor(windows) == torch.as_tensor(gold_windows)).all(1).sum()) / n,
        "consistent_pct": None if consistent is None else 100.0 * sum(bool(c) for c in consistent) / n,
        "replay_pct": 100.0 * float(replays.sum()) / max(int(reveals.sum()), 1),
        "replays": int(replays.sum()),
        "reveals_per_problem": float(reveals.sum()) / n,
        "remasks_per_problem": float(remasks.sum()) / n,
        "mean_calls": float(torch.as_tensor(calls).double().mean()),
        "max_calls": int(torch.as_tensor(calls).max()),
    }


def paired_accuracy(correct_a, correct_b) -> dict:
    """System b minus system a on the same problems: accuracy difference (points), its paired
    standard error, and how many problems only a / only b answer correctly."""
    a, b = torch.as_tensor(correct_a).double(), torch.as_tensor(correct_b).double()
    if a.shape != b.shape:
        raise ValueError(f"correct_a {tuple(a.shape)} and correct_b {tuple(b.shape)} differ in shape")
    mean, se = paired_stats(b - a)
    return {"problems": int(a.numel()), "diff_pct": 100.0 * mean, "se_pct": 100.0 * se,
            "only_a": int(((a > 0) & (b == 0)).sum()), "only_b": int(((b > 0) & (a == 0)).sum())}


def ordering(correct: dict, z: float = 2.0) -> list:
    """The relations of :data:`ORDERING` between systems present in ``correct`` (``{(system, K): [N] bool}``),
    at every ``K``: each a :func:`paired_accuracy` with ``a``, ``b``, ``k``, ``relation`` and ``verdict``."""
    out = []
    for k in sorted({k for _, k in correct}):
        for a, b, rel in ORDERING:
            if (a, k) in correct and (b, k) in correct and len(correct[(a, k)]) > 1:
                d = paired_accuracy(correct[(a, k)], correct[(b, k)])
                d.update(a=a, b=b, k=k, relation=rel, verdict=verdict(d["diff_pct"], d["se_pct"], rel, z))
                out.append(d)
    return out


def markdown_table(rows: list, titles: dict | None = None) -> str:
    """``[(system, K, metrics)]`` -> one markdown table."""
    t = titles or {}
    lines = ["| system | K | " + " | ".join(title for _, title, _ in COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for system, k, m in rows:
        cells = ["-" if m.get(key) is None else fmt.format(m[key]) for key, _, fmt in COLUMNS]
        lines.append(f"| {t.get(system, system)} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ordering_table(relations: list, titles: dict | None = None) -> str:
    """:func:`ordering` as a markdown table."""
    t = titles or {}
    lines = ["| K | published relation (accuracy) | difference, points (paired SE) | problems only the left / "
             "right answers | verdict |", "|---|---|---|---|---|"]
    for r in relations:
        lines.append(f"| {r['k']} | {t.get(r['a'], r['a'])} {r['relation']} {t.get(r['b'], r['b'])} | "
                     f"{r['diff_pct']:+.1f} ({r['se_pct']:.1f}) | {r['only_a']} / {r['only_b']} | {r['verdict']} |")
    return "\n".join(lines)


def binomial_se_pct(p_pct: float, n: int) -> float:
    """Standard error (points) of a percentage measured on ``n`` items."""
    p = p_pct / 100.0
    return 100.0 * math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


__all__ = ["COLUMNS", "ORDERING", "binomial_se_pct", "correct_mask", "markdown_table", "ordering", "ordering_table",
           "paired_accuracy", "problem_metrics"]
