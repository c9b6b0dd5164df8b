"""Reference for the fused per-position statistics (docs/spec.md §1).

What the published implementation does: float32 softmax over ``[N, V]``, an argmax, and two
gathers. Ties go to the lowest id (``torch.argmax``). With ``temperature > 0`` the candidate ids
are the Gumbel-max of ``z / temperature`` (noise from :mod:`rmkernels.reference.rng`) while the
probabilities stay those of ``softmax(z)``.

Rows that contain NaN, that are all ``-inf``, or whose current token lies outside ``[0, V)`` get
a non-zero ``status`` (bit flags below); their ids are -1 and their probabilities NaN.
"""
from __future__ import annotations

import torch

from rmkernels.reference.rng import gumbel_noise, row_counters

STATUS_NAN = 1  # the row holds a NaN logit
STATUS_ALL_NEG_INF = 2  # every logit of the row is -inf
STATUS_TOKEN_RANGE = 4  # the row's current token is outside [0, V)


def rm_stats_reference(
    logits: torch.Tensor,  # [..., V] float
    tokens: torch.Tensor,  # [...] int
    mask_id: int,
    temperature: float = 0.0,
    seed: int = 0,
    offset=0,
):
    """Returns ``(top_id, top_p, mask_p, cur_p, best_id, best_p, status)``, each ``[N]`` flat."""
    V = logits.shape[-1]
    z = logits.reshape(-1, V).to(torch.float32)  # [N, V]
    x = tokens.reshape(-1).to(torch.int64)  # [N]
    N = z.shape[0]

    status = torch.zeros(N, dtype=torch.int32, device=z.device)
    status |= torch.isnan(z).any(-1).to(torch.int32) * STATUS_NAN
    status |= (z == float("-inf")).all(-1).to(torch.int32) * STATUS_ALL_NEG_INF
    in_range = (x >= 0) & (x < V)
    status |= (~in_range).to(torch.int32) * STATUS_TOKEN_RANGE

    p = torch.softmax(z, dim=-1)  # [N, V] float32
    if temperature > 0:
        score = z / temperature + gumbel_noise(seed, row_counters(N, offset, z.device), V)
    else:
        score = z
    top_id = score.argmax(-1)
    score_no_mask = score.clone()
    score_no_mask[:, mask_id] = float("-inf")
    best_id = score_no_mask.argmax(-1)

    top_p = p.gather(1, top_id[:, None]).squeeze(1)
    best_p = p.gather(1, best_id[:, None]).squeeze(1)
    mask_p = p[:, mask_id].clone()
    cur_p = p.gather(1, x.clamp(0, V - 1)[:, None]).squeeze(1)

    bad = status != 0
    top_id = top_id.masked_fill(bad, -1)
    best_id = best_id.masked_fill(bad, -1)
    nan = float("nan")
    top_p, mask_p, cur_p, best_p = (t.masked_fill(bad, nan) for t in (top_p, mask_p, cur_p, best_p))
    return top_id, top_p, mask_p, cur_p, best_id, best_p, status
