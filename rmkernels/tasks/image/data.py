"""8 x 8 digit images (scikit-learn's bundled ``load_digits``, no download): splits, tokens,
evaluation instances and their files.

Splits, by row index ``i`` of ``load_digits()``: test iff ``i % 5 == 0``, val iff ``i % 5 == 1``,
train otherwise (1077 / 360 / 360 images).

Tokens (vocabulary 29): pixel levels ``0..16`` are ids ``0..16``; the class ``c`` is ``CLASS0 + c``
(17..26); ``NO_CLASS = 27`` is the empty condition; ``MASK_ID = 28``. A sequence is 65 tokens: the
condition slot (position 0) and the 64 pixels in row-major order.

Instance files: one instance a line, tab-separated fields

    <64 comma-separated levels: input>\\t<64 comma-separated levels: reference>[\\t<label>[\\t<condition>]]

Input levels are ``0``-``16`` or ``M`` (a masked pixel, inpainting); reference levels ``0``-``16``.
``label`` is the class the result should be classified as (``0``-``9``, or ``-``: unknown, e.g. the
reference's class for repair, the target class for editing); ``condition`` is the class token the
model is given (``0``-``9``, or ``-``: none; default ``-``). Blank lines and lines starting with
``#`` are skipped. Predictions: one line of 64 comma-separated levels per input (``M`` if a pixel
stayed masked).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SIDE = 8
PIXELS = SIDE * SIDE
LEVELS = 17  # pixel levels 0..16
CLASSES = 10
CLASS0 = LEVELS  # class c -> token CLASS0 + c
NO_CLASS = CLASS0 + CLASSES  # 27: no condition
MASK_ID = NO_CLASS + 1  # 28
VOCAB_SIZE = MASK_ID + 1  # 29
SEQ_LEN = PIXELS + 1  # condition slot + pixels
SPLITS = ("train", "val", "test")
TASKS = ("repair", "edit", "inpaint")
DEFAULT_SEED = 2024
DEFAULT_COUNT = 1080  # 3 instances per test image


def split_of(index) -> np.ndarray:
    """Split names of ``load_digits`` row indices: test iff ``i % 5 == 0``, val iff ``i % 5 == 1``."""
    r = np.asarray(index) % 5
    return np.where(r == 0, "test", np.where(r == 1, "val", "train"))


@lru_cache(maxsize=1)
def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype(np.int64), d.target.astype(np.int64)


def load_split(split: str):
    """``(images [N, 64] int64 levels 0..16, labels [N] int64, rows [N])`` of a split, in row order.

    Example
    -------
    >>> images, labels, rows = load_split("test")
    >>> images.shape, rows[:3].tolist()
    ((360, 64), [0, 5, 10])
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    images, labels = _digits()
    rows = np.nonzero(split_of(np.arange(len(images))) == split)[0]
    return images[rows], labels[rows], rows


def to_tokens(pixels, cond) -> np.ndarray:
    """``[N, 65]`` token rows: the condition (class ``0..9`` -> its token, ``-1`` -> ``NO_CLASS``) then
    the pixel ids ``[N, 64]`` (levels or ``MASK_ID``)."""
    pixels = np.asarray(pixels, dtype=np.int64)
    cond = np.broadcast_to(np.asarray(cond, dtype=np.int64), (pixels.shape[0],))
    slot = np.where(cond >= 0, CLASS0 + cond, NO_CLASS)
    return np.concatenate([slot[:, None], pixels], axis=1)


def shift_images(images: np.ndarray, rng: np.random.Generator, prob: float = 0.5) -> np.ndarray:
    """Augmentation: each image moved by one pixel (``dr, dc`` in ``{-1, 0, 1}``) with probability
    ``prob``, only where no ink leaves the frame (the row / column shifted out is blank)."""
    out = images.reshape(-1, SIDE, SIDE).copy()
    moves = rng.integers(-1, 2, size=(len(out), 2))
    use = rng.random(len(out)) < prob
    for i in np.nonzero(use)[0]:
        img = out[i]
        for axis, d in enumerate(moves[i]):
            if d == 0:
                continue
            edge = img[-1] if (axis == 0 and d > 0) else img[0] if axis == 0 else img[:, -1] if d > 0 else img[:, 0]
            if edge.any():
                continue
            img = np.roll(img, d, axis=axis)
        out[i] = img
    return out.reshape(-1, PIXELS)


@dataclass
class Instances:
    """Evaluation instances: ``inputs [N, 64]`` (levels or ``MASK_ID``), ``reference [N, 64]``
    (levels), ``label [N]`` (class the result should have, -1 unknown), ``cond [N]`` (class token
    given, -1 none), ``rows [N]`` (``load_digits`` row of the reference, -1 unknown), ``task``."""

    inputs: np.ndarray
    reference: np.ndarray
    label: np.ndarray
    cond: np.ndarray
    rows: np.ndarray
    task: str = ""

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def subset(self, idx) -> "Instances":
        return Instances(self.inputs[idx], self.reference[idx], self.label[idx], self.cond[idx], self.rows[idx],
                         self.task)

    def tokens(self) -> np.ndarray:
        """The model's input rows ``[N, 65]``."""
        return to_tokens(self.inputs, self.cond)


def make_instances(task: str, split: str = "test", n: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> Instances:
    """``n`` deterministic instances of ``task`` from the images of ``split`` (image ``i % N``).

    * repair: 3-12 random pixels set to a different random level; label = the image's class, no
      condition;
    * edit: the input is the image itself under the condition of another random class (label =
      that class); the reference is the source image;
    * inpaint: a 4 x 4 block (random place) or a half image (top / bottom / left / right), equally
      often, masked; label = the image's class, no condition.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    images, labels, rows = load_split(split)
    rng = np.random.default_rng([int(seed), TASKS.index(task), SPLITS.index(split)])
    pick = np.arange(n) % len(images)
    ref, lab, src = images[pick].copy(), labels[pick].copy(), rows[pick].copy()
    inputs = ref.copy()
    cond = np.full(n, -1, dtype=np.int64)
    if task == "repair":
        for i in range(n):
            k = int(rng.integers(3, 13))
            pos = rng.choice(PIXELS, size=k, replace=False)
            inputs[i, pos] = (ref[i, pos] + rng.integers(1, LEVELS, size=k)) % LEVELS
    elif task == "edit":
        lab = (lab + rng.integers(1, CLASSES, size=n)) % CLASSES
        cond = lab.copy()
    else:
        grid = np.arange(PIXELS).reshape(SIDE, SIDE)
        half = SIDE // 2
        for i in range(n):
            if rng.random() < 0.5:
                r0, c0 = rng.integers(0, SIDE - 3, size=2)
                region = grid[r0 : r0 + 4, c0 : c0 + 4]
            else:
                region = [grid[:half], grid[half:], grid[:, :half], grid[:, half:]][int(rng.integers(4))]
            inputs[i, np.asarray(region).reshape(-1)] = MASK_ID
    return Instances(inputs, ref, lab, cond, src, task)


# ---------------------------------------------------------------------------------------------
# files
def format_levels(ids) -> str:
    """64 comma-separated levels (``M`` for the mask id)."""
    return ",".join("M" if int(v) == MASK_ID else str(int(v)) for v in ids)


def _parse_levels(field: str, allow_mask: bool, where: str, what: str) -> list:
    parts = field.split(",")
    if len(parts) != PIXELS:
        raise ValueError(f"{where}: {what} has {len(parts)} comma-separated values, expected {PIXELS}")
    out = []
    for j, p in enumerate(parts):
        p = p.strip()
        if allow_mask and p == "M":
            out.append(MASK_ID)
        elif p.isdigit() and int(p) < LEVELS:
            out.append(int(p))
        else:
            allowed = "0-16 or M" if allow_mask else "0-16"
            raise ValueError(f"{where}: {what} value {j + 1} is {p!r} (allowed: {allowed})")
    return out


def _parse_class(field: str, where: str, what: str) -> int:
    field = field.strip()
    if field == "-":
        return -1
    if field.isdigit() and int(field) < CLASSES:
        return int(field)
    raise ValueError(f"{where}: {what} is {field!r} (allowed: 0-9 or -)")


def parse_instances(lines, source: str = "<instances>", task: str = "") -> Instances:
    """Parse instance lines (see the module docstring).

    Raises ``ValueError`` naming ``source`` and the 1-based line number of the first bad line (field
    count, value count, a value out of range), or saying the input holds no instances.
    """
    inputs, refs, labels, conds = [], [], [], []
    for no, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t")
        where = f"{source}:{no}"
        if not 2 <= len(fields) <= 4:
            raise ValueError(f"{where}: expected 2-4 tab-separated fields '<input>\\t<reference>[\\t<label>"
                             f"[\\t<condition>]]', got {len(fields)}")
        inputs.append(_parse_levels(fields[0], True, where, "input"))
        refs.append(_parse_levels(fields[1], False, where, "reference"))
        labels.append(_parse_class(fields[2], where, "label") if len(fields) > 2 else -1)
        conds.append(_parse_class(fields[3], where, "condition") if len(fields) > 3 else -1)
    if not inputs:
        raise ValueError(f"{source}: no instances found (the file is empty or holds only blank/comment lines)")
    n = len(inputs)
    return Instances(np.array(inputs, np.int64), np.array(refs, np.int64), np.array(labels, np.int64),
                     np.array(conds, np.int64), np.full(n, -1, np.int64), task)


def read_instances(path: str, task: str = "") -> Instances:
    """Read an instance file; errors name the file and line."""
    with open(path) as f:
        return parse_instances(f, source=str(path), task=task)


def instance_lines(inst: Instances):
    cls = lambda v: "-" if v < 0 else str(int(v))  # noqa: E731
    for x, r, lab, c in zip(inst.inputs, inst.reference, inst.label, inst.cond):
        yield f"{format_levels(x)}\t{format_levels(r)}\t{cls(lab)}\t{cls(c)}"


def write_instances(path: str, inst: Instances) -> None:
    """Write ``inst`` atomically in the file format above (every field written)."""
    from rmkernels.tasks.sudoku.data import write_lines

    write_lines(path, instance_lines(inst))


def write_predictions(path: str, pixels) -> None:
    """One line of 64 comma-separated levels per row of ``pixels [N, 64]``, atomically."""
    from rmkernels.tasks.sudoku.data import write_lines

    write_lines(path, (format_levels(p) for p in np.asarray(pixels)))


__all__ = [
    "CLASS0", "CLASSES", "DEFAULT_COUNT", "DEFAULT_SEED", "Instances", "LEVELS", "MASK_ID", "NO_CLASS", "PIXELS",
    "SEQ_LEN", "SIDE", "SPLITS", "TASKS", "VOCAB_SIZE", "format_levels", "instance_lines", "load_split",
    "make_instances", "parse_instances", "read_instances", "shift_images", "split_of", "to_tokens",
    "write_instances", "write_predictions",
]
