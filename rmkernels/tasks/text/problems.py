"""Written arithmetic: the task, its splits, the worked solution and problem files.

A problem is an expression of 2 to 4 integer operands joined by ``+``, ``-`` or ``*``, evaluated
**left to right** (no precedence). The first operand and the operands of ``+`` and ``-`` are
0-999; the right operand of ``*`` is a single digit 2-9; intermediate values may be negative.
The model sees ``<expression>=`` and writes its work, one operation per step, then the answer::

    37*4+129-58=  ->  37*4=148;148+129=277;277-58=219;#219

Only the integer after ``#`` is graded (:func:`parse_answer`).

Splits by hash: an expression is in the test split iff
``int(sha256(expression.encode()).hexdigest(), 16) % 10 == 0``, in val iff it is 1, else train.

Problem files: one problem a line, ``<expression>\\t<value>``; blank lines and lines starting with
``#`` are skipped. A bad line (malformed expression, operand out of range, a value that is not an
integer or not the left-to-right value) raises ``ValueError`` naming the file and line number.
"""
from __future__ import annotations

import hashlib
import os
import re

import numpy as np

OPS = "+-*"
MIN_OPERANDS, MAX_OPERANDS = 2, 4
MAX_OPERAND = 999  # first operand and operands of + and -
MUL_DIGITS = (2, 9)  # right operand of *
SPLITS = ("train", "val", "test")
SPLIT_OF_HASH = {0: "test", 1: "val"}  # sha256 % 10; every other residue is train
# longest work + "#answer" over every problem of the task (exhaustive search over reachable values,
# `experiments/text/max_lengths.py`); the longest expression is "999-999-999-999" (15 chars)
MAX_WORK_CHARS = 50
MAX_EXPRESSION_CHARS = 15

_NUM = r"(0|[1-9][0-9]{0,2})"
_EXPR_RE = re.compile(rf"{_NUM}(?:[-+*]{_NUM}){{{MIN_OPERANDS - 1},{MAX_OPERANDS - 1}}}")
_TOKEN_RE = re.compile(r"[0-9]+|[-+*]")


def split_of(expression: str) -> str:
    """The split of an expression: ``"test"`` iff sha256 % 10 == 0, ``"val"`` iff 1, else ``"train"``.

    Example
    -------
    >>> split_of("37*4+129-58") in SPLITS
    True
    """
    h = int(hashlib.sha256(expression.encode()).hexdigest(), 16) % 10
    return SPLIT_OF_HASH.get(h, "train")


def parse_expression(expression: str) -> tuple[list[int], list[str]]:
    """``(operands, operators)`` of a task expression; ``ValueError`` if it is not one.

    Operands have no leading zeros or signs (``"007"`` is not a task expression), so every value
    has one spelling and the hash split is well defined.
    """
    if not isinstance(expression, str) or not _EXPR_RE.fullmatch(expression):
        raise ValueError(f"not a task expression (2-4 operands 0-999 joined by + - *): {expression!r}")
    parts = _TOKEN_RE.findall(expression)
    operands, ops = [int(p) for p in parts[::2]], parts[1::2]
    for op, b in zip(ops, operands[1:]):
        if op == "*" and not MUL_DIGITS[0] <= b <= MUL_DIGITS[1]:
            raise ValueError(f"the right operand of * must be a single digit 2-9, got {b} in {expression!r}")
    return operands, ops


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def evaluate(expression: str) -> int:
    """The left-to-right value of a task expression (no precedence).

    Example
    -------
    >>> evaluate("2+3*4")
    20
    """
    operands, ops = parse_expression(expression)
    v = operands[0]
    for op, b in zip(ops, operands[1:]):
        v = _apply(v, op, b)
    return v


def work(expression: str) -> str:
    """The worked solution the model writes after ``<expression>=``: one ``a<op>b=c;`` per
    operation, then ``#<value>``.

    Example
    -------
    >>> work("37*4+129-58")
    '37*4=148;148+129=277;277-58=219;#219'
    """
    operands, ops = parse_expression(expression)
    v, steps = operands[0], []
    for op, b in zip(ops, operands[1:]):
        r = _apply(v, op, b)
        steps.append(f"{v}{op}{b}={r};")
        v = r
    return "".join(steps) + f"#{v}"


def parse_answer(text: str) -> str:
    """The graded answer of a generated text: the integer between the first ``#`` and the end of
    the text (callers cut it at ``<eos>``), or ``""`` when there is none or it is not an integer.

    Example
    -------
    >>> parse_answer("2+3=5;#5"), parse_answer("2+3=5;5"), parse_answer("#1_2")
    ('5', '', '')
    """
    i = text.find("#")
    if i < 0:
        return ""
    ans = text[i + 1 :]
    return ans if re.fullmatch(r"-?(0|[1-9][0-9]*)", ans) else ""


def consistent_work(expression: str, text: str) -> bool:
    """Whether a generated work is well formed and copies right: one ``L<op>R=C;`` per operation of
    ``expression``, with ``L`` the first operand and then the previous step's ``C``, ``<op>R`` the
    expression's operator and operand, then ``#`` and the last ``C``. Only the arithmetic (each
    ``C``) may be wrong: this isolates the copy and structure errors of parallel decoding.

    Example
    -------
    >>> consistent_work("2+3*4", "2+3=6;6*4=24;#24"), consistent_work("2+3*4", "2+3=6;5*4=20;#20")
    (True, False)
    """
    operands, ops = parse_expression(expression)
    num = r"(-?(?:0|[1-9][0-9]*))"
    pos, left = 0, str(operands[0])
    for op, b in zip(ops, operands[1:]):
        head = f"{left}{op}{b}="
        if not text.startswith(head, pos):
            return False
        m = re.compile(num + ";").match(text, pos + len(head))
        if not m:
            return False
        left, pos = m.group(1), m.end()
    return text[pos:] == f"#{left}"


def random_expression(rng: np.random.Generator) -> str:
    """One expression of the task's distribution: 2-4 operands (uniform), each operator uniform
    over ``+ - *``, operands uniform over their ranges."""
    n = int(rng.integers(MIN_OPERANDS, MAX_OPERANDS + 1))
    s = str(int(rng.integers(0, MAX_OPERAND + 1)))
    for _ in range(n - 1):
        op = OPS[int(rng.integers(0, 3))]
        b = rng.integers(MUL_DIGITS[0], MUL_DIGITS[1] + 1) if op == "*" else rng.integers(0, MAX_OPERAND + 1)
        s += f"{op}{int(b)}"
    return s


def generate_problems(split: str, n: int, seed: int, exclude=()) -> list[str]:
    """``n`` distinct expressions of ``split``, deterministic in ``(split, n, seed)``: draws from
    ``numpy.random.default_rng([seed, split index])`` and keeps those whose hash puts them in the
    split (and not in ``exclude``), in draw order.

    Example
    -------
    >>> ps = generate_problems("test", 3, seed=0)
    >>> len(ps), all(split_of(p) == "test" for p in ps)
    (3, True)
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng([int(seed), SPLITS.index(split)])
    seen, out = set(exclude), []
    while len(out) < n:
        e = random_expression(rng)
        if e not in seen and split_of(e) == split:
            seen.add(e)
            out.append(e)
    return out


def parse_problems(lines, source: str = "<problems>") -> tuple[list[str], list[int]]:
    """Parse problem lines ``<expression>\\t<value>``; returns ``(expressions, values)``.

    Raises ``ValueError`` naming ``source`` and the 1-based line number of the first bad line.
    """
    exprs, values = [], []
    for no, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise ValueError(f"{source}, line {no}: expected '<expression>\\t<value>', got {line[:60]!r}")
        expr, value = fields[0].strip(), fields[1].strip()
        try:
            truth = evaluate(expr)
        except ValueError as e:
            raise ValueError(f"{source}, line {no}: {e}") from None
        if not re.fullmatch(r"-?[0-9]+", value):
            raise ValueError(f"{source}, line {no}: value must be an integer, got {value!r}")
        if int(value) != truth:
            raise ValueError(f"{source}, line {no}: value {value} is not the left-to-right value {truth} of {expr!r}")
        exprs.append(expr)
        values.append(truth)
    if not exprs:
        raise ValueError(f"{source}: no problems")
    return exprs, values


def read_problems(path: str) -> tuple[list[str], list[int]]:
    """:func:`parse_problems` of a file."""
    if not os.path.exists(path):
        raise ValueError(f"problem file {path!r} does not exist")
    with open(path) as f:
        return parse_problems(f, source=path)


def format_problems(expressions) -> list[str]:
    """Problem-file lines ``<expression>\\t<value>``."""
    return [f"{e}\t{evaluate(e)}" for e in expressions]


def write_problems(path: str, expressions) -> None:
    """Write a problem file (atomically)."""
    from rmkernels._utils import atomic_write

    text = "\n".join(format_problems(expressions)) + "\n"

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)


__all__ = [
    "MAX_EXPRESSION_CHARS", "MAX_WORK_CHARS", "OPS", "SPLITS", "consistent_work", "evaluate", "format_problems", "generate_problems",
    "parse_answer", "parse_expression", "parse_problems", "random_expression", "read_problems", "split_of", "work",
    "write_problems",
]
