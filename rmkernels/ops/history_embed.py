"""History Reference input embeddings (SPEC §3): public entry point.

(Initial version: only the eager reference path; the fused C++/CUDA kernels plug in here.)
"""
from __future__ import annotations

import torch

from rmkernels._utils import resolve_impl
from rmkernels.reference.history import history_embed_reference

__all__ = ["history_embed"]


def history_embed(
    weight: torch.Tensor,
    input_ids: torch.Tensor,
    history_ids: torch.Tensor,
    history_len: torch.Tensor,
    token_mask: torch.Tensor,
    *,
    decay: float = 0.0,
    rotate: bool = True,
    ln_weight: torch.Tensor | None = None,
    ln_bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    impl: str = "auto",
) -> torch.Tensor:
    """``E[input_ids] + LayerNorm(sum_d w_d Rot_d(E[h_d]) g)`` for rows with history, else ``E[input_ids]``.

    Shapes: ``weight [V, D]``, ``input_ids [B, L]``, ``history_ids [B, H, L]`` (slot j = distance
    j + 1), ``history_len [B]``, ``token_mask [B, L]`` bool. Returns ``[B, L, D]`` in ``weight.dtype``.
    """
    impl = resolve_impl(impl, weight.device, "reference")
    return history_embed_reference(
        weight, input_ids, history_ids, history_len, token_mask,
        decay=decay, rotate=rotate, ln_weight=ln_weight, ln_bias=ln_bias, eps=eps,
    )
