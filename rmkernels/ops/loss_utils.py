"""Helpers shared by the loss ops (:mod:`rmkernels.ops.rm_loss`, :mod:`rmkernels.ops.linear_loss`) and
the trainer: argument checks, per-row weights, the weighted total and the per-part means (docs/spec.md §4)."""
from __future__ import annotations

import torch

from rmkernels._utils import INT_DTYPES, check_same_device, check_tensor
from rmkernels.reference.loss import PART_KEEP, PART_MASK, PART_REVEAL

__all__ = ["check_targets", "check_weights", "part_means", "row_weights", "validate_rows", "weighted_total"]


def check_weights(weights) -> tuple[float, float, float]:
    """``(w_reveal, w_mask, w_keep)`` as floats; ``ValueError`` unless 3 finite numbers >= 0, not all 0."""
    try:
        w = tuple(float(x) for x in weights)
    except (TypeError, ValueError):
        raise ValueError(f"weights must be a sequence of 3 numbers (reveal, mask, keep), got {weights!r}") from None
    if len(w) != 3:
        raise ValueError(f"weights must hold 3 numbers (reveal, mask, keep), got {len(w)}")
    if not all(0.0 <= x < float("inf") for x in w):
        raise ValueError(f"weights must be finite and >= 0, got {w}")
    if sum(w) == 0.0:
        raise ValueError("weights are all zero: the loss would be 0 / 0")
    return w


def check_targets(name: str, x: torch.Tensor, labels, part) -> None:
    """Static checks: integer ``labels`` / ``part`` shaped ``x.shape[:-1]`` on ``x``'s device."""
    check_tensor("labels", labels, dtypes=INT_DTYPES)
    check_tensor("part", part, dtypes=INT_DTYPES)
    check_same_device(**{name: x, "labels": labels, "part": part})
    for arg, t in (("labels", labels), ("part", part)):
        if tuple(t.shape) != tuple(x.shape[:-1]):
            raise ValueError(f"{arg} shape {tuple(t.shape)} must equal {name}.shape[:-1] = {tuple(x.shape[:-1])}")


def row_weights(part: torch.Tensor, weights) -> torch.Tensor:
    """``w[part_i]`` as float32 ``[N]``: 0 for ignored rows, NaN for unknown part ids."""
    pt = part.reshape(-1).long()  # uint8 ids must not wrap in the comparisons
    w = torch.where(pt == -1, 0.0, float("nan"))  # python scalars: no host-to-device copy
    for k in (PART_REVEAL, PART_MASK, PART_KEEP):
        w = torch.where(pt == k, weights[k], w)
    return w


def validate_rows(labels: torch.Tensor, part: torch.Tensor, w_row: torch.Tensor, V: int, weights) -> None:
    """Data checks on ``labels`` / ``part`` (one host synchronisation); raises ValueError."""
    y = labels.reshape(-1).long()
    pt = part.reshape(-1).long()
    unknown = (pt < -1) | (pt > PART_KEEP)
    active = pt >= 0
    bad_label = active & ((y < 0) | (y >= V))
    flags = torch.stack([unknown.any(), active.any(), bad_label.any(), w_row.sum() > 0]).tolist()
    first = lambda m: torch.nonzero(m).flatten()[:5].tolist()  # noqa: E731
    if flags[0]:
        raise ValueError(f"part holds ids outside {{-1, 0, 1, 2}} (first bad flattened positions: {first(unknown)})")
    if not flags[1]:
        raise ValueError("part marks no position for the loss (all -1 or empty): missing answer positions")
    if flags[2]:
        raise ValueError(f"labels holds ids outside [0, V={V}) at non-ignored positions (first: {first(bad_label)})")
    if not flags[3]:
        raise ValueError(f"weights={tuple(weights)} give zero total weight to the non-ignored positions")


def weighted_total(ce: torch.Tensor, w_row: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i CE_i / sum_i w_i`` (differentiable in ``ce``)."""
    return (w_row * ce).sum() / w_row.sum()


def part_means(ce: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """Mean CE of the reveal / mask / keep positions, ``[3]`` (0 for an absent part)."""
    sel = (part.reshape(-1, 1).long() == torch.arange(3, device=ce.device)).float()  # [N, 3]
    return (ce @ sel) / sel.sum(0).clamp(min=1.0)
