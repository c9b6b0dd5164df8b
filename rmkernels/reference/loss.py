"""Reference for the Reflective Masking post-training loss (docs/spec.md §4).

``part`` per position: 0 = reveal (label = gold token), 1 = mask (label = mask id), 2 = keep
(label = the current token), -1 = ignore (prompt, padding).

    total = sum_i w[part_i] * CE_i / sum_i w[part_i]     over positions with part_i >= 0
    reveal, mask, keep = mean CE over each part's own positions (0 when a part has none)
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

PART_REVEAL, PART_MASK, PART_KEEP, PART_IGNORE = 0, 1, 2, -1


class RMLoss(NamedTuple):
    """The Reflective Masking loss (docs/spec.md §4), float32 scalars: ``total`` (the weighted mean
    CE) and the mean CE of each part, ``reveal``, ``mask``, ``keep`` (0 for an absent part)."""

    total: torch.Tensor
    reveal: torch.Tensor
    mask: torch.Tensor
    keep: torch.Tensor


def rm_loss_reference(
    logits: torch.Tensor,  # [..., V]
    labels: torch.Tensor,  # [...]
    part: torch.Tensor,  # [...] in {-1, 0, 1, 2}
    weights=(1.0, 1.0, 1.0),
) -> RMLoss:
    V = logits.shape[-1]
    z = logits.reshape(-1, V).float()  # [N, V]
    y = labels.reshape(-1).long()
    pt = part.reshape(-1).long()
    active = pt >= 0
    # where, not "* active": a non-finite ignored row (NaN * 0) must not leak into the loss
    ce = torch.where(active, F.cross_entropy(z, torch.where(active, y, 0), reduction="none"), 0.0)  # [N]
    w_table = torch.as_tensor(weights, dtype=torch.float32, device=z.device)  # [3]
    w = w_table[pt.clamp(min=0)] * active
    total = (w * ce).sum() / w.sum()
    parts = []
    for k in (PART_REVEAL, PART_MASK, PART_KEEP):
        sel = (pt == k).float()
        parts.append((ce * sel).sum() / sel.sum().clamp(min=1.0))
    return RMLoss(total, *parts)


def rm_linear_loss_reference(
    hidden: torch.Tensor,  # [..., D]
    lm_weight: torch.Tensor,  # [V, D]
    labels: torch.Tensor,  # [...]
    part: torch.Tensor,  # [...]
    lm_bias: torch.Tensor | None = None,  # [V]
    weights=(1.0, 1.0, 1.0),
) -> RMLoss:
    """:func:`rm_loss_reference` on the materialised logits ``hidden @ lm_weight.T + lm_bias``."""
    return rm_loss_reference(F.linear(hidden, lm_weight, lm_bias), labels, part, weights)
