"""Chunked LM head + Reflective Masking loss: the ``[N, V]`` logits are never materialised (docs/spec.md §4).

Rows are processed in chunks of ``C`` (the scheme of Liger's fused linear cross-entropy)::

    z        = hidden_c @ W.T + b      # [C, V], compute dtype: the only V-wide buffer
    ce_c     = fused loss kernel(z)    # z is overwritten in place with d total / d z
    grad_h_c = z @ W                   # [C, D]
    grad_W  += z.T @ hidden_c          # [V, D], accumulated in W's dtype
    grad_b  += z.sum(0)                # [V], float32

``d total / d z_i = (softmax(z_i) - onehot(label_i)) * w_i / sum_j w_j`` is known in the forward,
so all gradients are computed there (three matmuls per chunk, as many as eager) and the backward
only scales them, in place, by the upstream gradient of ``total``. Consequences: only ``total``
is differentiable (the parts are returned detached), and one graph supports one backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton

from rmkernels._utils import FLOAT_DTYPES, check_same_device, check_tensor, resolve_impl
from rmkernels.ops.loss_utils import check_targets, check_weights, part_means, row_weights, validate_rows, weighted_total
from rmkernels.reference.loss import RMLoss

__all__ = ["rm_linear_loss"]


def _chunk_triton(z, labels, part, coef, write_grad: bool, block_v: int) -> torch.Tensor:
    """Per-row CE of the chunk ``z [C, V]``; with ``write_grad`` z becomes ``dCE/dz * coef``."""
    if write_grad:
        return torch.ops.rmkernels.rm_ce_fwd_grad_(z, labels, part, coef, block_v)
    return torch.ops.rmkernels.rm_ce_fwd(z, labels, part, block_v)[0]


def _chunk_torch(z, labels, part, coef, write_grad: bool, block_v: int) -> torch.Tensor:
    """Eager torch version of :func:`_chunk_triton` (CPU path; one float32 work buffer ``[C, V]``
    unless ``z`` is float32 already)."""
    V = z.shape[-1]
    zf = z.float()  # [C, V]
    lse = torch.logsumexp(zf, dim=-1)  # [C]
    active = part >= 0
    y_ok = (labels >= 0) & (labels < V)
    idx = torch.where(y_ok, labels, 0).long()[:, None]  # [C, 1], never out of bounds
    nan = float("nan")
    ce = torch.where(active, torch.where(y_ok, lse - zf.gather(1, idx)[:, 0], nan), 0.0)
    if write_grad:
        scale = torch.where(active, torch.where(y_ok, coef, nan), 0.0)[:, None]  # [C, 1]
        g = zf.sub_(lse[:, None]).exp_().scatter_add_(1, idx, -y_ok[:, None].float())  # in place: zf is spent
        z.copy_(g.mul_(scale).masked_fill_(scale == 0, 0.0))
    return ce


class _LinearRMLoss(torch.autograd.Function):
    """``(total, ce)`` from ``hidden [N, D]``, ``weight [V, D]``, ``bias [V] | None``; ``ce`` has no gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, part, w_row, chunk_size, chunk_fn, block_v):
        N = hidden.shape[0]
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        write_grad = need_h or need_w or need_b
        coef = w_row / w_row.sum()  # [N] d total / d CE_i
        ce = torch.empty(N, dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None  # [N, D]
        grad_w = torch.zeros_like(weight) if need_w else None  # [V, D]
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, N, chunk_size):
                e = min(s + chunk_size, N)
                h_c = hidden[s:e]  # [C, D]
                z = F.linear(h_c, weight, bias)  # [C, V]
                ce[s:e] = chunk_fn(z, labels[s:e], part[s:e], coef[s:e], write_grad, block_v)
                if need_h:
                    torch.mm(z, weight, out=grad_h[s:e])
                if need_w:
                    grad_w.addmm_(z.t(), h_c)
                if need_b:
                    grad_b += z.sum(0, dtype=torch.float32)
        ctx.mark_non_differentiable(ce)
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return weighted_total(ce, w_row), ce

    @staticmethod
    def backward(ctx, grad_total, grad_ce):
        if ctx.grads is None:
            raise RuntimeError(
                "rm_linear_loss computes its gradients in the forward and hands them out once: "
                "backward through the same graph twice (retain_graph=True) is not supported"
            )
        grad_h, grad_w, grad_b = (None if g is None else g.mul_(grad_total) for g in ctx.grads)
        ctx.grads = None
        if grad_b is not None:
            grad_b = grad_b.to(ctx.bias_dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None, None


def _default_chunk(N: int, V: int, D: int) -> int:
    # Liger's heuristic (the chunk's logits [C, V] about the size of the hidden states [N, D]),
    # with at least 256 rows: grad_W += z.T @ h_c is a rank-C update that reads and writes all of
    # grad_W, inefficient for small C (measured on CPU: C = 16 is 4x slower than C = 256)
    return max(1, min(N, max(256, triton.next_power_of_2(triton.cdiv(N, triton.cdiv(V, D))))))


def rm_linear_loss(
    hidden: torch.Tensor,
    lm_weight: torch.Tensor,
    labels: torch.Tensor,
    part: torch.Tensor,
    *,
    lm_bias: torch.Tensor | None = None,
    weights=(1.0, 1.0, 1.0),
    chunk_size: int | None = None,
    check: bool = True,
    impl: str = "auto",
    block_v: int | None = None,
) -> RMLoss:
    """Reflective Masking loss of ``hidden @ lm_weight.T + lm_bias`` without materialising the logits.

    Same values as ``rm_loss(F.linear(hidden, lm_weight, lm_bias), labels, part, weights=weights)``
    while the only vocabulary-wide buffer is one chunk of ``chunk_size`` rows.

    Parameters
    ----------
    hidden : Tensor ``[..., D]``
        Final hidden states, float32 / float16 / bfloat16, any leading shape.
    lm_weight : Tensor ``[V, D]``
        LM-head weight, same dtype as ``hidden`` (under ``torch.autocast`` all inputs are cast to
        the autocast dtype instead).
    labels, part : Tensor ``[...]``
        As in :func:`rmkernels.rm_loss`, shaped ``hidden.shape[:-1]``.
    lm_bias : Tensor ``[V]``, optional
        LM-head bias.
    weights : sequence of 3 floats
        ``(w_reveal, w_mask, w_keep)``, finite, >= 0, not all zero.
    chunk_size : int, optional
        Rows per chunk. Default: the power of two near ``N * D / V`` (the chunk's logits about the
        size of ``hidden``), at least 256 (N=8192, D=4096, V=126464: 512).
    check : bool
        As in :func:`rmkernels.rm_loss` (one host synchronisation; ``ValueError`` on bad labels /
        part ids / no non-ignored position / zero total weight).
    impl : {"auto", "triton", "ext", "reference"}
        ``"triton"``: chunked, with the fused Triton loss kernel per chunk (CUDA tensors; CPU
        tensors in the interpreter, ``TRITON_INTERPRET=1``). ``"reference"``: chunked, with the
        eager torch loss per chunk (a float32 work buffer per chunk): the CPU path, equal to the
        definition :func:`rmkernels.reference.loss.rm_linear_loss_reference` (which materialises
        the logits; the tests' oracle). ``"auto"``: Triton where it can run, else the reference.
        ``"ext"`` raises ``ValueError``: this op has no extension kernel.
    block_v : int, optional
        Tuning override: vocabulary tile width of the Triton kernel.

    Returns
    -------
    RMLoss
        ``(total, reveal, mask, keep)``, float32 scalars. Only ``total`` is differentiable (to
        ``hidden``, ``lm_weight``, ``lm_bias``); the parts are detached, for every ``impl``.
        The gradients are computed during the forward (when any input requires grad) and held
        until the backward, which scales them in place: one backward per graph. ``grad_W`` is
        accumulated over chunks in ``lm_weight``'s dtype, as in Liger.

    Example
    -------
    >>> hidden = torch.randn(2, 8, 32, requires_grad=True)    # [B, L, D] final hidden states
    >>> lm_weight = torch.randn(1000, 32, requires_grad=True)  # [V, D]
    >>> labels, part = torch.randint(0, 1000, (2, 8)), torch.zeros(2, 8, dtype=torch.long)
    >>> out = rm_linear_loss(hidden, lm_weight, labels, part, chunk_size=4)
    >>> out.total.backward()                                   # grads of hidden and lm_weight
    >>> hidden.grad.shape
    torch.Size([2, 8, 32])
    """
    check_tensor("hidden", hidden, dtypes=FLOAT_DTYPES, min_ndim=1)
    check_tensor("lm_weight", lm_weight, dtypes=FLOAT_DTYPES, ndim=2)
    if lm_bias is not None:
        check_tensor("lm_bias", lm_bias, dtypes=FLOAT_DTYPES, ndim=1)
    check_same_device(hidden=hidden, lm_weight=lm_weight, lm_bias=lm_bias)
    check_targets("hidden", hidden, labels, part)
    V, D = lm_weight.shape
    if hidden.shape[-1] != D:
        raise ValueError(f"lm_weight shape {tuple(lm_weight.shape)} must be [V, D] with D = hidden.shape[-1] = {hidden.shape[-1]}")
    if V == 0:
        raise ValueError("lm_weight has an empty vocabulary dimension (V == 0)")
    if lm_bias is not None and tuple(lm_bias.shape) != (V,):
        raise ValueError(f"lm_bias shape {tuple(lm_bias.shape)} must be [V] = ({V},)")
    weights = check_weights(weights)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    device = hidden.device
    if torch.is_autocast_enabled(device.type):
        dt = torch.get_autocast_dtype(device.type)
        hidden, lm_weight = hidden.to(dt), lm_weight.to(dt)
        lm_bias = None if lm_bias is None else lm_bias.to(dt)
    else:
        for name, t in (("lm_weight", lm_weight), ("lm_bias", lm_bias)):
            if t is not None and t.dtype != hidden.dtype:
                raise ValueError(f"{name} dtype {t.dtype} must equal hidden dtype {hidden.dtype} (or run under autocast)")
    impl = resolve_impl("rm_linear_loss", impl, device)
    w_row = row_weights(part, weights)
    if check:  # both chunked paths bound-check labels themselves: unchecked bad rows give NaN
        validate_rows(labels, part, w_row, V, weights)
    N = labels.numel()
    chunk = chunk_size or _default_chunk(N, V, D)
    chunk_fn = _chunk_triton if impl == "triton" else _chunk_torch
    total, ce = _LinearRMLoss.apply(
        hidden.reshape(N, D), lm_weight, lm_bias, labels.reshape(-1), part.reshape(-1), w_row, chunk, chunk_fn, block_v or 0
    )
    return RMLoss(total, *part_means(ce, part))
