"""On-policy Sudoku states: the decoder's own failures, mixed into post-training batches.

The synthetic trajectories of docs/spec.md §4 (and :mod:`rmkernels.tasks.sudoku.synth`) rarely show the
states a trained model actually gets stuck in: a fixed point with two digits left wrong (a
swapped pair whose columns each hold a duplicate) that the model cannot tell from the correct
digits they clash with. :func:`collect_states` decodes train-split boards with a model and keeps
every state of each board that ended invalid, with the decoder's own history;
:class:`OnPolicyMix` replaces the last ``rows`` rows of every synthetic batch with such states,
labelled by the same oracle (masked -> gold, wrong -> ``M``, correct -> keep;
:func:`rmkernels.training.make_batch`), so the history a state carries is exactly what the
decoder fed the model there.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from rmkernels.tasks.sudoku.grids import MASK_ID, is_valid


@dataclass
class PolicyStates:
    """Decoded trajectories ``frames [F, T + 1, 81]`` (``frames[:, 0]`` the corrupted input) with
    their solutions ``gold [F, 81]``, and the states drawn from them: state ``p`` is frame
    ``current[p]`` of trajectory ``board[p]`` (``[P]`` each)."""

    frames: torch.Tensor
    gold: torch.Tensor
    board: torch.Tensor
    current: torch.Tensor

    def __len__(self) -> int:
        return self.board.numel()


@torch.no_grad()
def collect_states(model, history_norm, settings: dict, corrupted, solution, kernels: str = "auto",
                   only_invalid: bool = True) -> PolicyStates:
    """Decode boards ``[N, 81]`` with the model (the variant's History Reference ``settings``) and
    keep, of each board whose final state is not its solution, every state ``1 <= c <= steps``.

    With ``only_invalid``, boards that end on a valid grid other than the solution are left out:
    the input may not single out the solution there, and labelling that grid's digits wrong
    teaches noise."""
    from rmkernels.tasks.sudoku.evaluate import decode_boards, decode_config

    solution = torch.as_tensor(solution).long()
    cfg = decode_config({"decode": settings})
    final, steps, traj = decode_boards(model, history_norm, torch.as_tensor(corrupted).long(), cfg, kernels=kernels)
    failed = (final != solution).any(1)  # [N]
    if only_invalid:
        failed &= ~is_valid(final)
    failed = failed.nonzero()[:, 0]  # [F]
    n_states = steps[failed].clamp(min=1)  # [F] states 1..steps of each kept board
    board = torch.repeat_interleave(torch.arange(failed.numel()), n_states)  # [P]
    first = torch.cumsum(n_states, 0) - n_states
    current = torch.arange(board.numel()) - first[board] + 1  # [P] in 1..steps
    return PolicyStates(traj.transpose(0, 1)[failed].contiguous(), solution[failed], board, current)


class OnPolicyMix:
    """Post-training data whose batches end with ``rows`` on-policy states.

    ``fetch(indices, step)`` gives ``synthetic.fetch(indices[:-rows], step)`` followed by ``rows``
    of the ``states`` (:func:`collect_states`), drawn with a seed of ``(seed, step)``."""

    def __init__(self, synthetic, states: PolicyStates, rows: int, seed: int = 0):
        if len(states) == 0:
            raise ValueError("on-policy states: the model solved every board, there is nothing to mix in")
        if not 1 <= rows:
            raise ValueError(f"onpolicy_rows must be >= 1, got {rows}")
        self.synthetic, self.states, self.rows, self.seed = synthetic, states, int(rows), int(seed)

    def __len__(self) -> int:
        return len(self.synthetic)

    def fetch(self, indices, step: int = 0):
        from rmkernels.training import RMBatch, make_batch

        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if idx.numel() <= self.rows:
            raise ValueError(f"onpolicy_rows ({self.rows}) must be smaller than the batch ({idx.numel()})")
        synth = self.synthetic.fetch(idx[: -self.rows], step)
        rng = np.random.default_rng([self.seed, int(step), 7])
        pick = torch.from_numpy(rng.integers(0, len(self.states), self.rows))  # [rows] states
        b = self.states.board[pick]
        traj = SimpleNamespace(frames=self.states.frames[b], current=self.states.current[pick])
        gold = self.states.gold[b]
        own = make_batch(traj, gold, torch.ones_like(gold, dtype=torch.bool), MASK_ID, self.synthetic.history_steps)
        return RMBatch.cat([synth, own])


__all__ = ["OnPolicyMix", "PolicyStates", "collect_states"]
