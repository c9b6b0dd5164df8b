"""Reference for History Reference (HER) input embeddings (docs/spec.md §3).

    s_i   = sum_{d=1..H_b} w_d * Rot_d(E[h^(d)_i]) * g_i
    w_d   = exp(-decay * max(d - 1, 0))
    Rot_d : halves a = e[:half], b = e[half:2*half] (half = D // 2; odd D: the last dim passes
            through); theta_k = d / 10000**(k / half), k = 0 .. half-1;
            Rot_d(e) = [a*cos(theta) - b*sin(theta), a*sin(theta) + b*cos(theta)]
    g_i   = token_mask (1 on generated positions, 0 on prompt positions)
    r_i   = LayerNorm(s_i; ln_weight, ln_bias, eps) in float32
    out_i = E[x_i] + r_i   for rows with history_len >= 1,   E[x_i] otherwise.

``history_ids[b, j]`` holds distance ``d = j + 1`` (slot 0 is the most recent state); only the first
``history_len[b]`` slots of a row are used. Everything is accumulated in float32 and cast to the
embedding dtype once at the end.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F


def her_rotation(distances: torch.Tensor, dim: int):
    """``cos, sin`` of shape ``[len(distances), dim // 2]`` (float32) for the HER rotation."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=distances.device)
    inv_freq = torch.pow(10000.0, -k / max(half, 1))  # [half]
    theta = distances.to(torch.float32)[:, None] * inv_freq[None, :]  # [H, half]
    return torch.cos(theta), torch.sin(theta)


def rotate_half_pairs(e: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply Rot to ``e [..., D]`` with ``cos, sin`` broadcastable to ``[..., D // 2]``."""
    D = e.shape[-1]
    half = D // 2
    a, b, rest = e[..., :half], e[..., half : 2 * half], e[..., 2 * half :]
    return torch.cat([a * cos - b * sin, a * sin + b * cos, rest], dim=-1)


def her_weights(H: int, decay: float, device=None) -> torch.Tensor:
    """``w_d = exp(-decay * max(d - 1, 0))`` for d = 1..H, float32 ``[H]``."""
    d = torch.arange(1, H + 1, dtype=torch.float32, device=device)
    return torch.exp(-float(decay) * (d - 1).clamp(min=0))


def history_embed_reference(
    weight: torch.Tensor,  # [V, D]
    input_ids: torch.Tensor,  # [B, L]
    history_ids: torch.Tensor,  # [B, H, L]
    history_len: torch.Tensor,  # [B]
    token_mask: torch.Tensor,  # [B, L] bool
    *,
    decay: float = 0.0,
    rotate: bool = True,
    ln_weight: torch.Tensor | None = None,  # [D]
    ln_bias: torch.Tensor | None = None,  # [D]
    eps: float = 1e-5,
) -> torch.Tensor:  # [B, L, D] in weight.dtype
    B, H, L = history_ids.shape
    D = weight.shape[1]
    cur = F.embedding(input_ids.long(), weight)  # [B, L, D]
    if H == 0:
        return cur.clone()
    w32 = weight.float()
    hist = F.embedding(history_ids.long(), w32)  # [B, H, L, D]
    if rotate:
        cos, sin = her_rotation(torch.arange(1, H + 1, device=weight.device), D)  # [H, half]
        hist = rotate_half_pairs(hist, cos[None, :, None, :], sin[None, :, None, :])
    valid = torch.arange(H, device=weight.device)[None, :] < history_len.to(weight.device)[:, None]  # [B, H]
    w = her_weights(H, decay, weight.device)[None, :] * valid  # [B, H]
    s = (hist * w[:, :, None, None]).sum(1) * token_mask[:, :, None].float()  # [B, L, D]
    lw = None if ln_weight is None else ln_weight.float()
    lb = None if ln_bias is None else ln_bias.float()
    r = F.layer_norm(s, (D,), lw, lb, eps)  # [B, L, D] float32
    has_hist = (history_len > 0).to(weight.device)[:, None, None]  # [B, 1, 1]
    out = torch.where(has_hist, cur.float() + r, cur.float())
    return out.to(weight.dtype)


__all__ = ["her_rotation", "her_weights", "history_embed_reference", "rotate_half_pairs"]
