"""History Reference input embeddings (docs/spec.md §3): fused kernels and the public entry point.

Implementations
---------------
* ``"ext"``: the ``rmkernels._C`` extension. One fused pass per position gathers the ``H + 1``
  embedding rows, rotates each history row by its distance, weights, masks and sums them in
  float32, applies the LayerNorm with its affine, adds the current-token embedding and writes the
  row once. C++ on CPU tensors (``csrc/history_embed.cpp``, ``at::parallel_for`` over positions),
  CUDA on CUDA tensors (``csrc/history_embed_cuda.cu``, one block per position, 16-byte loads).
  Registered as ``torch.ops.rmkernels.history_embed`` / ``history_embed_backward`` (schemas in
  ``csrc/module.cpp``); fake implementations and autograd are registered here.
* ``"reference"``: the eager definition :func:`rmkernels.reference.history.history_embed_reference`,
  also the fallback when the extension is not built.

The rotation and decay tables (``cos, sin [H, D/2]``, ``hw [H]``) are built by the reference's own
helpers once per ``(H, D, decay, rotate, device, dtype)`` and cached, so a decoding step launches
only the fused kernel.
"""
from __future__ import annotations

import math

import torch

from rmkernels._ext import extension_available
from rmkernels._utils import FLOAT_DTYPES, INT_DTYPES, check_same_device, check_tensor, resolve_impl
from rmkernels.reference.history import her_rotation, her_weights, history_embed_reference

__all__ = ["extension_available", "history_embed"]

WEIGHT_DTYPES = FLOAT_DTYPES + (torch.float64,)


# ----------------------------------------------------------------------------------------------
# Rotation / decay tables
# ----------------------------------------------------------------------------------------------
_TABLES: dict = {}


def _tables(H: int, D: int, decay: float, rotate: bool, device: torch.device, dtype: torch.dtype):
    """``cos, sin [H, D // 2]`` and ``hw [H]`` in ``dtype`` (cos = 1, sin = 0 without rotation)."""
    key = (H, D, decay, rotate, device, dtype)
    hit = _TABLES.get(key)
    if hit is not None:
        return hit
    if rotate:
        cos, sin = her_rotation(torch.arange(1, H + 1, device=device), D)
    else:
        cos = torch.ones(H, D // 2, device=device)
        sin = torch.zeros(H, D // 2, device=device)
    tables = tuple(t.to(dtype).contiguous() for t in (cos, sin, her_weights(H, decay, device)))
    if not torch.compiler.is_compiling():  # never cache tensors made while tracing
        if len(_TABLES) >= 64:
            _TABLES.clear()
        _TABLES[key] = tables
    return tables


# ----------------------------------------------------------------------------------------------
# Registration: fake implementations and autograd for the C++ ops
# ----------------------------------------------------------------------------------------------
def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fake_forward(weight, input_ids, history_ids, history_len, token_mask, cos, sin, hw, ln_weight, ln_bias, eps):
    return weight.new_empty((input_ids.shape[0], input_ids.shape[1], weight.shape[1]))


def _fake_backward(grad_out, weight, input_ids, history_ids, history_len, token_mask, cos, sin, hw, ln_weight, eps,
                   weight_grad):
    V, D = weight.shape
    return weight.new_empty((V if weight_grad else 0, D)), cos.new_empty((D,)), cos.new_empty((D,))


def _setup_context(ctx, inputs, output):
    weight, input_ids, history_ids, history_len, token_mask, cos, sin, hw, ln_weight, ln_bias, eps = inputs
    ctx.save_for_backward(weight, input_ids, history_ids, history_len, token_mask, cos, sin, hw, ln_weight)
    ctx.eps = eps


def _backward(ctx, grad):
    saved = ctx.saved_tensors
    need = ctx.needs_input_grad
    gw, glw, glb = torch.ops.rmkernels.history_embed_backward(grad.contiguous(), *saved, ctx.eps, need[0])
    keep = lambda flag, g: g if flag else None  # noqa: E731
    return keep(need[0], gw), None, None, None, None, None, None, None, keep(need[8], glw), keep(need[9], glb), None


if extension_available("cpu"):  # the extension is loaded: its schemas exist
    torch.library.register_fake("rmkernels::history_embed")(_fake_forward)
    torch.library.register_fake("rmkernels::history_embed_backward")(_fake_backward)
    torch.library.register_autograd("rmkernels::history_embed", _backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
def _check_args(weight, input_ids, history_ids, history_len, token_mask, ln_weight, ln_bias, decay, eps) -> None:
    check_tensor("weight", weight, dtypes=WEIGHT_DTYPES, ndim=2)
    if weight.shape[0] == 0 or weight.shape[1] == 0:
        raise ValueError(f"weight must have at least one row and one column, got shape {tuple(weight.shape)}")
    check_tensor("input_ids", input_ids, dtypes=INT_DTYPES, ndim=2)
    check_tensor("history_ids", history_ids, dtypes=INT_DTYPES, ndim=3)
    check_tensor("history_len", history_len, dtypes=INT_DTYPES, ndim=1)
    check_tensor("token_mask", token_mask, dtypes=(torch.bool,), ndim=2)
    B, L = input_ids.shape
    D = weight.shape[1]
    if history_ids.shape[0] != B or history_ids.shape[2] != L:
        raise ValueError(f"history_ids must have shape [B, H, L] = [{B}, H, {L}], got {tuple(history_ids.shape)}")
    if tuple(history_len.shape) != (B,):
        raise ValueError(f"history_len must have shape [B] = [{B}], got {tuple(history_len.shape)}")
    if tuple(token_mask.shape) != (B, L):
        raise ValueError(f"token_mask must have shape [B, L] = [{B}, {L}], got {tuple(token_mask.shape)}")
    for name, t in (("ln_weight", ln_weight), ("ln_bias", ln_bias)):
        if t is not None:
            check_tensor(name, t, dtypes=WEIGHT_DTYPES, ndim=1)
            if t.shape[0] != D:
                raise ValueError(f"{name} must have shape [D] = [{D}], got {tuple(t.shape)}")
    check_same_device(weight=weight, input_ids=input_ids, history_ids=history_ids, history_len=history_len,
                      token_mask=token_mask, ln_weight=ln_weight, ln_bias=ln_bias)
    if not math.isfinite(decay):
        raise ValueError(f"decay must be a finite number, got {decay}")
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number > 0, got {eps}")


def _check_values(V: int, H: int, input_ids, history_ids, history_len) -> None:
    """Id ranges and history lengths, with one host synchronisation on CUDA."""
    bad = torch.stack([
        ((input_ids < 0) | (input_ids >= V)).any(),
        ((history_ids < 0) | (history_ids >= V)).any(),
        ((history_len < 0) | (history_len > H)).any(),
    ]).tolist()
    if bad[0]:
        raise ValueError(f"input_ids holds ids outside [0, V={V})")
    if bad[1]:
        raise ValueError(f"history_ids holds ids outside [0, V={V})")
    if bad[2]:
        raise ValueError(f"history_len must be in [0, H={H}]")


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------
def history_embed(
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
    check: bool = True,
    impl: str = "auto",
) -> torch.Tensor:  # [B, L, D] in weight.dtype
    """History Reference input embeddings (docs/spec.md §3), fused.

    ``E[input_ids] + LayerNorm(sum_d w_d * Rot_d(E[h_d]) * g)`` on rows with ``history_len >= 1``,
    plain ``E[input_ids]`` on rows with none.

    Parameters
    ----------
    weight : Tensor ``[V, D]``
        The model's input embedding table ``E``: float32, float16 or bfloat16 (float64 is accepted
        and computed in float64, for ``gradcheck``). Rows may be strided.
    input_ids : Tensor ``[B, L]``
        Current tokens (integer).
    history_ids : Tensor ``[B, H, L]``
        Past states, slot ``j`` at distance ``d = j + 1`` (slot 0 the most recent), e.g.
        :attr:`rmkernels.HistoryBuffer.ids`. Every id must be in ``[0, V)``, used slot or not.
    history_len : Tensor ``[B]``
        Valid slots per row, ``0 .. H``.
    token_mask : Tensor ``[B, L]`` bool
        ``g``: True on generated positions (only they receive the history sum).
    decay : float
        ``lambda`` in ``w_d = exp(-lambda * (d - 1))``.
    rotate : bool
        Rotate history row ``d`` by ``Rot_d`` (False: the "HR" ablation, no rotation).
    ln_weight, ln_bias : Tensor ``[D]``, optional
        LayerNorm affine (e.g. :class:`rmkernels.HistoryNorm`); ``None`` = 1 / 0.
    eps : float
        LayerNorm epsilon (> 0).
    check : bool
        Validate id ranges and ``history_len`` and raise ``ValueError``. On CUDA this costs one host
        synchronisation; pass ``check=False`` in decoding loops and CUDA graphs: the CUDA kernel
        then writes NaN rows for positions with an out-of-range id or length and never reads out of
        bounds. The CPU kernel always validates (the check is free there).
    impl : {"auto", "triton", "ext", "reference"}
        ``"ext"``: the ``rmkernels._C`` kernel (C++ on CPU tensors, CUDA on CUDA tensors when built
        with CUDA). ``"reference"``: the eager definition. ``"auto"``: the extension where it can run,
        else the reference. ``"triton"`` raises ``ValueError``: this op has no Triton kernel
        (``generate`` / the trainer fall back to ``"auto"`` instead).

    Returns
    -------
    Tensor
        ``[B, L, D]`` in ``weight.dtype``; differentiable with respect to ``weight`` (scatter-add),
        ``ln_weight`` and ``ln_bias``.

    Example
    -------
    >>> from rmkernels import HistoryBuffer, HistoryNorm
    >>> E = torch.randn(100, 64)                                # the model's embedding table [V, D]
    >>> buf, norm = HistoryBuffer(2, 10, 6), HistoryNorm(64)
    >>> x_prev = torch.randint(0, 100, (2, 10)); x = x_prev.clone(); x[:, 0] = 99
    >>> buf.push(x_prev, (x != x_prev).any(1))                 # after a decoding step changed x
    >>> gen = torch.ones(2, 10, dtype=torch.bool)               # generated positions
    >>> emb = history_embed(E, x, buf.ids, buf.lengths, gen, ln_weight=norm.weight, ln_bias=norm.bias)
    >>> emb.shape                                               # model(inputs_embeds=emb)
    torch.Size([2, 10, 64])
    """
    decay, eps = float(decay), float(eps)
    _check_args(weight, input_ids, history_ids, history_len, token_mask, ln_weight, ln_bias, decay, eps)
    impl = resolve_impl("history_embed", impl, weight.device)
    V, D = weight.shape
    H = history_ids.shape[1]
    if check and not (impl == "ext" and weight.device.type == "cpu"):
        _check_values(V, H, input_ids, history_ids, history_len)
    if impl == "reference":
        return history_embed_reference(
            weight, input_ids, history_ids, history_len, token_mask,
            decay=decay, rotate=bool(rotate), ln_weight=ln_weight, ln_bias=ln_bias, eps=eps,
        )
    acc = _acc_dtype(weight.dtype)
    cos, sin, hw = _tables(H, D, decay, bool(rotate), weight.device, acc)
    as_acc = lambda t: None if t is None else t.to(acc)  # noqa: E731
    return torch.ops.rmkernels.history_embed(
        weight, input_ids.long(), history_ids.long(), history_len.long(), token_mask,
        cos, sin, hw, as_acc(ln_weight), as_acc(ln_bias), eps,
    )
