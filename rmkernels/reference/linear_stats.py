"""Reference for the fused LM head + Reflective Masking statistics (docs/spec.md §9).

The logits are materialised in float32 from the (possibly half-precision) inputs, exactly as the
fused kernels define them: products of the stored values, accumulated in float32, never rounded
back to the input dtype::

    z = (hidden.float() @ lm_weight[:V].float().T + lm_bias[:V].float()) * logit_scale
    z[:, suppress_tokens] = -inf

and the statistics are :func:`rm_stats_reference` of ``z`` (same tie rules, status flags and
counter RNG).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rmkernels.reference.rm_stats import rm_stats_reference


def linear_logits_reference(
    hidden: torch.Tensor,  # [..., D]
    lm_weight: torch.Tensor,  # [V', D]
    lm_bias: torch.Tensor | None = None,  # [V']
    vocab_size: int | None = None,
    suppress_tokens=(),
    logit_scale: float = 1.0,
) -> torch.Tensor:  # [..., V] float32
    """The float32 logits the fused op scores (see the module docstring)."""
    V = lm_weight.shape[0] if vocab_size is None else int(vocab_size)
    w = lm_weight[:V].float()
    b = None if lm_bias is None else lm_bias[:V].float()
    z = F.linear(hidden.float(), w, b)
    if logit_scale != 1.0:
        z = z * float(logit_scale)
    if isinstance(suppress_tokens, torch.Tensor):
        idx = suppress_tokens.reshape(-1).to(device=z.device, dtype=torch.int64)
    else:
        idx = torch.tensor([int(t) for t in suppress_tokens], dtype=torch.int64, device=z.device)
    if idx.numel():
        z = z.index_fill(-1, idx, float("-inf"))
    return z


def rm_linear_stats_reference(
    hidden: torch.Tensor,
    lm_weight: torch.Tensor,
    tokens: torch.Tensor,
    mask_id: int,
    lm_bias: torch.Tensor | None = None,
    vocab_size: int | None = None,
    temperature: float = 0.0,
    seed: int = 0,
    offset=0,
    suppress_tokens=(),
    logit_scale: float = 1.0,
):
    """Returns ``(top_id, top_p, mask_p, cur_p, best_id, best_p, status)``, each ``[N]`` flat, as
    :func:`rm_stats_reference` on :func:`linear_logits_reference`."""
    z = linear_logits_reference(hidden, lm_weight, lm_bias, vocab_size, suppress_tokens, logit_scale)
    return rm_stats_reference(z, tokens, mask_id, temperature=temperature, seed=seed, offset=offset)
