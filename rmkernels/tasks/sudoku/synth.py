"""Sudoku post-training data: docs/spec.md §4 trajectories plus the decoder's own kinds of mistakes.

docs/spec.md §4 synthesis (:func:`rmkernels.training.build_trajectories`) corrupts cells independently
and always reveals the gold digit. Decoding corrupted boards with ``reveal="all"`` makes a kind of
mistake that never appears there: masked cells of one unit revealed in parallel with each other's
digits (swapped pairs, which break only one unit each) and, in general, wrong reveals. A model
that never saw them keeps them (measured: about two thirds of the failed validation boards end
with swapped pairs). :class:`SudokuRMData` adds them to the synthetic trajectories:

* **pairs**: with probability ``pair_prob`` a noisy cell is paired with a noisy peer (same box and
  line if there is one, the swaps that survive decoding; else same row, column or box); each
  shows the other's gold digit wherever it would show a wrong digit;
* **wrong reveals**: a masked cell whose gold reveal comes at frame ``r >= 3`` is first revealed
  wrong (its partner's gold digit, or with probability ``wrong_reveal_prob`` a random wrong digit
  when unpaired) on frames ``[r1, a)``, masked on ``[a, r)``, gold from ``r``
  (``1 <= r1 < a < r``): the transition masked -> wrong -> M -> gold.

A swapped pair can be half of a swappable rectangle (two rows and two columns spanning two
boxes, digits ``a b / b a``): the state is then exactly as near the grid with the rectangle's other
half swapped as to the gold grid, and labelling the generator's half wrong is a coin flip the model
cannot learn (it learns to keep both halves: a stuck board). With ``pair_labels="anchored"`` such
a row's target becomes the grid that keeps the state's digits at the earliest of the four cells
(the rule of :func:`rmkernels.tasks.sudoku.ceiling.canonical_solutions` with an anchor): when that
is the other grid, the pair holds its digits throughout and the other half goes wrong -> ``M`` ->
its digits on the pair's schedule.

Labels and history come from the edited frames (:func:`rmkernels.training.make_batch`), so
everything else follows docs/spec.md §4. With ``pair_prob = wrong_reveal_prob = 0`` the batches equal
:class:`rmkernels.training.SynthData`'s.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from rmkernels.tasks.sudoku.grids import CELLS, CELL_UNITS, DIGITS, MASK_ID, VOCAB_SIZE

KIND_WRONG, KIND_MASKED = 2, 1  # rmkernels.training.synth kinds
PAIR_LABELS = ("solution", "anchored")
_SHARED = (CELL_UNITS[:, None, :, None] == CELL_UNITS[None, :, None, :]).sum((2, 3)) * ~np.eye(CELLS, dtype=bool)
PEERS = _SHARED > 0  # [81, 81] same row, column or box
CLOSE_PEERS = _SHARED > 1  # [81, 81] same box and same row or column: a swap there breaks one unit only


def rectangle_partner(grid: np.ndarray, x: int, y: int):
    """The cells ``(x2, y2)`` completing peer cells ``x, y`` of a valid ``grid [81]`` to a swappable
    rectangle (``x2`` in ``x``'s column or row, holding ``grid[y]``; ``y2`` likewise for ``y``; the
    four cells in two boxes), or ``None``."""
    (rx, cx), (ry, cy) = divmod(int(x), 9), divmod(int(y), 9)
    if rx == ry:  # same row: another row
        cands = [(9 * r + cx, 9 * r + cy) for r in range(9) if r != rx]
    elif cx == cy:  # same column: another column
        cands = [(9 * rx + c, 9 * ry + c) for c in range(9) if c != cx]
    else:  # box peers only: no rectangle
        return None
    for x2, y2 in cands:
        if grid[x2] == grid[y] and grid[y2] == grid[x] and len({CELL_UNITS[v, 2] for v in (x, y, x2, y2)}) == 2:
            return x2, y2
    return None


def add_decoder_mistakes(traj, gold: torch.Tensor, rng: np.random.Generator, pair_prob: float,
                         wrong_reveal_prob: float, pair_labels: str = "solution"):
    """Edited ``(frames [B, T, L], gold [B, L])`` of a :class:`SynthTrajectory` (see the module
    docstring)."""
    frames = traj.frames.clone().numpy()
    kind, mask_at, reveal_at = (t.numpy() for t in (traj.kind, traj.mask_at, traj.reveal_at))
    g = gold.numpy().copy()
    for b in range(frames.shape[0]):
        noisy = np.nonzero(kind[b])[0]
        rng.shuffle(noisy)
        partner = {}
        for x in noisy:
            if x in partner or rng.random() >= pair_prob:
                continue
            free = [y for y in noisy if y != x and y not in partner and PEERS[x, y]]
            close = [y for y in free if CLOSE_PEERS[x, y]]
            free = close or free
            if free:
                y = free[rng.integers(len(free))]
                partner[x], partner[y] = y, x
        for x in noisy:
            if x in partner:
                val = g[b, partner[x]]
            elif kind[b, x] == KIND_MASKED and rng.random() < wrong_reveal_prob:
                val = (g[b, x] + rng.integers(1, DIGITS)) % DIGITS
            else:
                continue
            if kind[b, x] == KIND_WRONG:
                frames[b, : mask_at[b, x], x] = val
            elif reveal_at[b, x] >= 3:
                r1 = rng.integers(1, reveal_at[b, x] - 1)  # [1, r - 2]
                a = rng.integers(r1 + 1, reveal_at[b, x])  # [r1 + 1, r - 1]
                frames[b, r1:a, x] = val
        if pair_labels == "anchored":
            _anchor_rectangles(frames[b], g[b], kind[b], mask_at[b], reveal_at[b], partner)
    return torch.from_numpy(frames), torch.from_numpy(g)


def _anchor_rectangles(frames, g, kind, mask_at, reveal_at, partner) -> None:
    """In place, one row: retarget each wrong swapped pair that is half of a swappable rectangle
    (other half clean) to the grid keeping the earliest of the four cells' shown digits."""
    done = set()
    for x, y in partner.items():
        if x > y or kind[x] != KIND_WRONG or kind[y] != KIND_WRONG:
            continue
        other = rectangle_partner(g, x, y)
        if other is None or any(kind[v] or v in done for v in other) or min(other) < min(x, y):
            continue  # earliest cell in the other half: its digits stay, the gold grid is the label
        x2, y2 = other
        ax, ay = g[x], g[y]
        for cell, src in ((x2, x), (y2, y)):  # the other half (clean: gold's digit) -> M -> its new digit
            frames[mask_at[src] : reveal_at[src], cell] = MASK_ID
        g[x], g[y], g[x2], g[y2] = ay, ax, ax, ay  # the other grid; the pair now shows its digits
        frames[:, x], frames[:, y] = ay, ax
        frames[reveal_at[x] :, x2], frames[reveal_at[y] :, y2] = ax, ay
        done.update((x, y, x2, y2))


class SudokuRMData:
    """Online RM data for the trainer: ``fetch(indices, step)`` synthesises rows ``indices`` of
    ``targets [N, 81]`` with seed ``step_seed(seed, step)`` and adds decoder mistakes."""

    def __init__(self, targets: torch.Tensor, config, *, base_model=None, seed: int = 0, pair_prob: float = 0.0,
                 wrong_reveal_prob: float = 0.0, pair_labels: str = "solution"):
        for name, p in (("pair_prob", pair_prob), ("wrong_reveal_prob", wrong_reveal_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if pair_labels not in PAIR_LABELS:
            raise ValueError(f"pair_labels must be one of {PAIR_LABELS}, got {pair_labels!r}")
        self.pair_labels = pair_labels
        self.targets, self.config, self.base_model, self.seed = targets, config, base_model, int(seed)
        self.pair_prob, self.wrong_reveal_prob = float(pair_prob), float(wrong_reveal_prob)
        self.vocab_size, self.mask_id, self.history_steps = VOCAB_SIZE, MASK_ID, int(config.history_steps)
        self.answer_mask = torch.ones_like(targets, dtype=torch.bool)

    def __len__(self) -> int:
        return self.targets.shape[0]

    def fetch(self, indices, step: int = 0):
        from rmkernels.training import build_trajectories, make_batch
        from rmkernels.training.data import step_seed

        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        gold, am = self.targets[idx], self.answer_mask[idx]
        traj = build_trajectories(gold, am, self.base_model, MASK_ID, self.config, seed=step_seed(self.seed, step),
                                  row_ids=idx, vocab_size=VOCAB_SIZE)
        if self.pair_prob > 0 or self.wrong_reveal_prob > 0:
            rng = np.random.default_rng([self.seed, int(step)])
            frames, gold = add_decoder_mistakes(traj, gold, rng, self.pair_prob, self.wrong_reveal_prob, self.pair_labels)
            traj = replace(traj, frames=frames)
        return make_batch(traj, gold, am, MASK_ID, self.config.history_steps)


__all__ = ["CLOSE_PEERS", "PAIR_LABELS", "PEERS", "SudokuRMData", "add_decoder_mistakes", "rectangle_partner"]
