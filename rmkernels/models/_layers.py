"""Pieces shared by the native LLaDA and Dream models: RMSNorm, rotary embeddings, attention backends.

Everything here is written from the architecture facts of the two model families (pre-norm
RMSNorm transformers with rotary position embeddings in the rotate-half form and grouped K/V),
not copied from another implementation.

Attention backends (one switch, ``attn_impl``):

``"eager"``
    The reference: ``softmax(Q K^T / sqrt(d) + mask) V`` computed explicitly in float32. Slow,
    obviously right, and the oracle for the other two.
``"sdpa"``
    ``torch.nn.functional.scaled_dot_product_attention`` with a boolean key mask and
    ``enable_gqa``. Runs everywhere.
``"flash"``
    ``flash_attn.flash_attn_varlen_func`` (non-causal): padded keys are removed and the batch is
    described by cumulative sequence lengths; without padding ``flash_attn_func`` is used. Needs
    the ``flash-attn`` package, CUDA tensors and float16 / bfloat16. With padding the unpadding
    step indexes by a boolean mask (a host synchronisation), so a padded flash forward cannot be
    captured in a CUDA graph; an unpadded one can.
``"auto"``
    ``"flash"`` where it can run (installed, CUDA, half precision), ``"sdpa"`` otherwise.

All three attend bidirectionally (no causal mask) and honour a key padding mask ``[B, Lk]``
(True = a real token): padded keys get no weight. Padded *queries* are computed like any other
(their outputs are ignored by callers). A row with no real key at all gets a zero output.
"""
from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ATTN_IMPLS = ("auto", "flash", "sdpa", "eager")
_HALF = (torch.float16, torch.bfloat16)


def flash_attn_available() -> bool:
    """True when the ``flash_attn`` package is importable (it still needs CUDA half-precision tensors)."""
    return importlib.util.find_spec("flash_attn") is not None


def check_attn_impl(attn_impl: str) -> str:
    if attn_impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
    return attn_impl


def resolve_attn_impl(attn_impl: str, q: torch.Tensor) -> str:
    """The concrete backend for ``attn_impl`` and queries ``q`` (raises when ``"flash"`` cannot run)."""
    check_attn_impl(attn_impl)
    can_flash = q.is_cuda and q.dtype in _HALF and flash_attn_available()
    if attn_impl == "auto":
        return "flash" if can_flash else "sdpa"
    if attn_impl == "flash" and not can_flash:
        why = ("the flash-attn package is not installed" if not flash_attn_available()
               else f"it needs CUDA float16/bfloat16 tensors, got {q.device} {q.dtype}")
        raise ValueError(f"attn_impl='flash' cannot run: {why}")
    return attn_impl


# ---------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """Root-mean-square LayerNorm: ``weight * (x / sqrt(mean(x^2) + eps))``.

    The normalisation runs in float32; the result is cast back to the input dtype before the
    (elementwise) weight is applied, as in both released model families.

    Parameters
    ----------
    dim : int
        Size of the last dimension.
    eps : float
        Added to the mean square.

    Example
    -------
    >>> norm = RMSNorm(4, eps=0.0)
    >>> norm(torch.tensor([[3.0, 4.0, 0.0, 0.0]]))  # rms = 2.5
    tensor([[1.2000, 1.6000, 0.0000, 0.0000]], grad_fn=<MulBackward0>)
    """

    def __init__(self, dim: int, eps: float = 1e-6, *, device=None, dtype=None):
        super().__init__()
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


# ---------------------------------------------------------------------------------------------
def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for ``position_ids`` ``[B, L]``: ``cos, sin`` of shape ``[B, 1, L, head_dim]`` in float32.

    Frequencies ``inv_freq[j] = theta ** (-2j / head_dim)`` for ``j < head_dim / 2``; the angle of
    position ``p`` is ``p * inv_freq``, repeated for both halves (the rotate-half layout).
    """
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head dimension, got {head_dim}")
    dev = position_ids.device
    inv_freq = 1.0 / (float(theta) ** (torch.arange(0, head_dim, 2, device=dev, dtype=torch.int64).float() / head_dim))
    angles = position_ids.float()[..., None] * inv_freq  # [B, L, d/2]
    emb = torch.cat([angles, angles], dim=-1)[:, None]  # [B, 1, L, d]
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dimension (halves, not interleaved pairs)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[B, H, L, d]`` by the tables of :func:`rope_cos_sin` (in float32, result in ``x.dtype``).

    Example
    -------
    >>> cos, sin = rope_cos_sin(torch.tensor([[1]]), 4, theta=10000.0)  # angles 1 and 0.01
    >>> apply_rope(torch.tensor([[[[1.0, 0.0, 0.0, 0.0]]]]), cos, sin)  # x1 = (1, 0) turns by 1 rad
    tensor([[[[0.5403, 0.0000, 0.8415, 0.0000]]]])
    """
    x32 = x.float()
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)


# ---------------------------------------------------------------------------------------------
def _attention_eager(q, k, v, key_mask):
    Hq, Hkv = q.shape[1], k.shape[1]
    k32, v32 = k.float(), v.float()
    if Hq != Hkv:
        k32, v32 = k32.repeat_interleave(Hq // Hkv, dim=1), v32.repeat_interleave(Hq // Hkv, dim=1)
    scores = q.float() @ k32.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [B, Hq, Lq, Lk]
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    p = torch.softmax(scores, dim=-1)
    if key_mask is not None:  # a row with no real key: zero output, not NaN
        p = torch.where(key_mask.any(-1)[:, None, None, None], p, 0.0)
    return (p @ v32).to(q.dtype)


def _attention_sdpa(q, k, v, key_mask):
    mask = None if key_mask is None else key_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


def _attention_flash(q, k, v, key_mask):
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    B, Hq, Lq, d = q.shape
    Lk = k.shape[2]
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, L, H, d], last dim contiguous
    if key_mask is None:
        return flash_attn_func(qt.contiguous(), kt.contiguous(), vt.contiguous(), causal=False).transpose(1, 2)
    # every query is kept (Lq per row); keys are unpadded and described by cumulative lengths
    arange = torch.arange(B + 1, device=q.device, dtype=torch.int32)
    cu_q = arange * Lq
    cu_k = F.pad(key_mask.sum(1, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0))
    out = flash_attn_varlen_func(
        qt.reshape(B * Lq, Hq, d), kt[key_mask], vt[key_mask], cu_q, cu_k, Lq, Lk, causal=False,
    )  # [B * Lq, Hq, d]; Lk is an upper bound of the per-row key lengths
    return out.view(B, Lq, Hq, d).transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None,
              attn_impl: str = "auto") -> torch.Tensor:
    """Bidirectional multi-head attention with grouped K/V and a key padding mask.

    Parameters
    ----------
    q : Tensor ``[B, Hq, Lq, d]``
    k, v : Tensor ``[B, Hkv, Lk, d]``
        ``Hq`` must be a multiple of ``Hkv`` (query head ``h`` uses K/V head ``h // (Hq / Hkv)``).
    key_mask : Tensor ``[B, Lk]`` bool, optional
        True = a real key. ``None``: every key is real.
    attn_impl : {"auto", "flash", "sdpa", "eager"}

    Returns
    -------
    Tensor ``[B, Hq, Lq, d]`` in ``q.dtype``.

    Example
    -------
    >>> q, k, v = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    >>> attention(q, k, v, torch.tensor([[True] * 4 + [False]]), attn_impl="eager").shape
    torch.Size([1, 4, 3, 8])
    """
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"q, k, v must be [B, H, L, d] with k and v alike, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1] or q.shape[1] % k.shape[1]:
        raise ValueError(f"q {tuple(q.shape)} does not fit k {tuple(k.shape)}: batch and head dim must "
                         "match and the query heads must be a multiple of the K/V heads")
    if key_mask is not None and (key_mask.dtype != torch.bool or tuple(key_mask.shape) != (k.shape[0], k.shape[2])):
        raise ValueError(f"key_mask must be a bool [B, Lk] = {(k.shape[0], k.shape[2])} tensor, got "
                         f"{key_mask.dtype} {tuple(key_mask.shape)}")
    impl = resolve_attn_impl(attn_impl, q)
    if impl == "eager":
        return _attention_eager(q, k, v, key_mask)
    if impl == "sdpa":
        return _attention_sdpa(q, k, v, key_mask)
    return _attention_flash(q, k, v, key_mask)
