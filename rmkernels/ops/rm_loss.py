"""Fused Reflective Masking loss (docs/spec.md §4): weighted cross-entropy with reveal / mask / keep parts.

Kernel layout
-------------
* ``_rm_ce_fwd_kernel``: one program per row streams the vocabulary in ``BLOCK_V`` tiles with an
  online softmax (running max and sum, float32) and writes the row's log-sum-exp and
  ``CE = lse - z[label]``. Ignored rows (``part < 0``) read nothing and get ``CE = 0``. The label
  is bounds-checked: an out-of-range label is never dereferenced, its CE is NaN.
  With ``WRITE_GRAD`` (the chunked linear loss) a second pass over the row, in the same program,
  overwrites the logits in place with ``(softmax - onehot) * coef[row]``.
* ``_rm_ce_bwd_kernel``: ``dlogits = (exp(z - lse) - onehot(label)) * grad_ce[row]`` in one read
  of the logits and one write; rows with a zero coefficient are written as zeros without reading.

Gradient strategy of :func:`rm_loss`: the forward stores only ``lse [N]`` (the logits are not
modified); the backward recomputes the softmax from the logits. The reduction from the per-row
CE to ``total`` / ``reveal`` / ``mask`` / ``keep`` is plain torch on ``[N]`` vectors, so all four
outputs are differentiable.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from rmkernels._utils import FLOAT_DTYPES, check_tensor, resolve_impl
from rmkernels.ops._rows import pick_block, row_base, row_layout
from rmkernels.ops.loss_utils import check_targets, check_weights, part_means, row_weights, validate_rows, weighted_total
from rmkernels.reference.loss import RMLoss, rm_loss_reference

__all__ = ["RMLoss", "rm_loss"]


# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _row_lse(base, V, active, BLOCK_V: tl.constexpr):
    """log-sum-exp of one row in float32 (online softmax over tiles); reads nothing if not active."""
    NEG_INF: tl.constexpr = float("-inf")
    lanes = tl.arange(0, BLOCK_V)
    n_read = tl.where(active, V, 0)
    m = float("-inf")
    s = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + lanes
        z = tl.load(base + cols, mask=cols < n_read, other=NEG_INF).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        ok = m_new > NEG_INF  # guards exp(-inf - -inf) while the row is all -inf so far
        s = s * tl.where(ok, tl.exp(m - m_new), 0.0) + tl.sum(tl.where(ok, tl.exp(z - m_new), 0.0), axis=0)
        m = m_new
    return m + tl.log(tl.where(s == 0.0, 1.0, s))  # s == 0 only for all -inf rows: lse = -inf; NaN stays


@triton.jit
def _row_grad(src, dst, V, y, lse, scale, BLOCK_V: tl.constexpr):
    """``dst[v] = (exp(src[v] - lse) - (v == y)) * scale``; zeros without reading ``src`` if scale == 0."""
    lanes = tl.arange(0, BLOCK_V)
    need = scale != 0.0  # NaN scales (bad rows with check=False) still propagate
    n_read = tl.where(need, V, 0)
    for start in range(0, V, BLOCK_V):
        cols = start + lanes
        valid = cols < V
        z = tl.load(src + cols, mask=cols < n_read, other=0.0).to(tl.float32)
        g = (tl.exp(z - lse) - (cols == y).to(tl.float32)) * scale
        tl.store(dst + cols, tl.where(need, g, 0.0).to(dst.dtype.element_ty), mask=valid)


@triton.jit
def _row_target(y_ptr, part_ptr, row, V):
    y = tl.load(y_ptr + row).to(tl.int64)
    active = tl.load(part_ptr + row).to(tl.int32) >= 0
    y_ok = (y >= 0) & (y < V)
    return y, active, y_ok


@triton.jit
def _rm_ce_fwd_kernel(
    z_ptr, y_ptr, part_ptr, coef_ptr, ce_ptr, lse_ptr,
    V, L1, stride0, stride1,
    WRITE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0)
    base = row_base(z_ptr, row, L1, stride0, stride1)
    y, active, y_ok = _row_target(y_ptr, part_ptr, row, V)
    lse = _row_lse(base, V, active, BLOCK_V)
    z_y = tl.load(base + tl.where(y_ok, y, 0)).to(tl.float32)  # never out of bounds
    nan = float("nan")
    tl.store(ce_ptr + row, tl.where(active, tl.where(y_ok, lse - z_y, nan), 0.0))
    tl.store(lse_ptr + row, lse)
    if WRITE_GRAD:
        scale = tl.where(active, tl.where(y_ok, tl.load(coef_ptr + row), nan), 0.0)
        _row_grad(base, base, V, y, lse, scale, BLOCK_V)


@triton.jit
def _rm_ce_bwd_kernel(
    z_ptr, y_ptr, part_ptr, lse_ptr, g_ptr, dz_ptr,
    V, L1, stride0, stride1,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0)
    base = row_base(z_ptr, row, L1, stride0, stride1)
    y, active, y_ok = _row_target(y_ptr, part_ptr, row, V)
    scale = tl.where(active, tl.where(y_ok, tl.load(g_ptr + row), float("nan")), 0.0)
    _row_grad(base, dz_ptr + row.to(tl.int64) * V, V, y, tl.load(lse_ptr + row), scale, BLOCK_V)


# ----------------------------------------------------------------------------------------------
# Launchers and registered ops
# ----------------------------------------------------------------------------------------------
def _new_output(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocate a kernel output (tests replace this to poison outputs before the launch)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _rows_fake(labels: torch.Tensor, device) -> torch.Tensor:
    return torch.empty(labels.numel(), dtype=torch.float32, device=device)


def _launch_fwd(logits, labels, part, coef, block_v: int, write_grad: bool):
    """Per-row ``(ce, lse)``, float32 ``[N]``; with ``write_grad`` overwrites ``logits`` in place."""
    V = logits.shape[-1]
    z, N, L1, st0, st1 = row_layout(logits)
    if write_grad and z.data_ptr() != logits.data_ptr():
        raise ValueError("logits must have a unit last-dim stride for the in-place gradient kernel")
    ce, lse = (_new_output(N, torch.float32, logits.device) for _ in range(2))
    if N:
        block = block_v if block_v > 0 else pick_block(V)
        coef = ce if coef is None else coef  # any float32 pointer: unread without WRITE_GRAD
        _rm_ce_fwd_kernel[(N,)](
            z, labels.reshape(-1).contiguous(), part.reshape(-1).contiguous(), coef, ce, lse,
            V, L1, st0, st1, WRITE_GRAD=write_grad, BLOCK_V=block, num_warps=8 if block >= 2048 else 4,
        )
    return ce, lse


@torch.library.custom_op("rmkernels::rm_ce_fwd", mutates_args=())
def _rm_ce_fwd(logits: torch.Tensor, labels: torch.Tensor, part: torch.Tensor, block_v: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(ce, lse)``, float32 ``[N]`` (``N = labels.numel()``)."""
    return _launch_fwd(logits, labels, part, None, block_v, write_grad=False)


@_rm_ce_fwd.register_fake
def _(logits, labels, part, block_v):
    return _rows_fake(labels, logits.device), _rows_fake(labels, logits.device)


@torch.library.custom_op("rmkernels::rm_ce_bwd", mutates_args=())
def _rm_ce_bwd(
    logits: torch.Tensor, labels: torch.Tensor, part: torch.Tensor, lse: torch.Tensor, grad_ce: torch.Tensor, block_v: int
) -> torch.Tensor:
    """``dlogits`` (contiguous, ``logits.dtype``) for the upstream gradient ``grad_ce [N]``."""
    V = logits.shape[-1]
    z, N, L1, st0, st1 = row_layout(logits)
    dz = _new_output(logits.shape, logits.dtype, logits.device)
    if N:
        block = block_v if block_v > 0 else pick_block(V)
        _rm_ce_bwd_kernel[(N,)](
            z, labels.reshape(-1).contiguous(), part.reshape(-1).contiguous(), lse.reshape(-1).contiguous(),
            grad_ce.float().contiguous(), dz, V, L1, st0, st1,
            BLOCK_V=block, num_warps=8 if block >= 2048 else 4,
        )
    return dz


@_rm_ce_bwd.register_fake
def _(logits, labels, part, lse, grad_ce, block_v):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


def _ce_setup_context(ctx, inputs, output):
    logits, labels, part, block_v = inputs
    ctx.save_for_backward(logits, labels, part, output[1])
    ctx.block_v = block_v


def _ce_backward(ctx, grad_ce, grad_lse):
    logits, labels, part, lse = ctx.saved_tensors
    return torch.ops.rmkernels.rm_ce_bwd(logits, labels, part, lse, grad_ce, ctx.block_v), None, None, None


torch.library.register_autograd("rmkernels::rm_ce_fwd", _ce_backward, setup_context=_ce_setup_context)


@torch.library.custom_op("rmkernels::rm_ce_fwd_grad_", mutates_args=("logits",))
def _rm_ce_fwd_grad_(logits: torch.Tensor, labels: torch.Tensor, part: torch.Tensor, coef: torch.Tensor, block_v: int) -> torch.Tensor:
    """Per-row CE ``[N]``; overwrites ``logits [..., V]`` in place with ``dCE/dz * coef[:, None]``."""
    return _launch_fwd(logits, labels, part, coef.float().contiguous(), block_v, write_grad=True)[0]


@_rm_ce_fwd_grad_.register_fake
def _(logits, labels, part, coef, block_v):
    return _rows_fake(labels, logits.device)


# ----------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------
def rm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    part: torch.Tensor,
    *,
    weights=(1.0, 1.0, 1.0),
    check: bool = True,
    impl: str = "auto",
    block_v: int | None = None,
) -> RMLoss:
    """Reflective Masking post-training loss from logits (docs/spec.md §4), fused cross-entropy kernel.

    ``total = sum_i w[part_i] * CE_i / sum_i w[part_i]`` over the positions with ``part_i >= 0``;
    ``reveal``, ``mask``, ``keep`` are the mean CE over each part's own positions (0 when absent).

    Parameters
    ----------
    logits : Tensor ``[..., V]``
        float32, float16 or bfloat16; any leading shape; rows may be strided. Never modified.
    labels : Tensor ``[...]``
        Integer target ids, shape ``logits.shape[:-1]``; must lie in ``[0, V)`` where ``part >= 0``
        (ignored positions may hold anything, e.g. -100).
    part : Tensor ``[...]``
        Integer part ids: 0 = reveal, 1 = mask, 2 = keep, -1 = ignore (prompt, padding).
    weights : sequence of 3 floats
        ``(w_reveal, w_mask, w_keep)``, finite, >= 0, not all zero.
    check : bool
        Validate ``labels`` / ``part`` (unknown part ids, labels out of range at non-ignored
        positions, no non-ignored position, zero total weight) at the cost of one host
        synchronisation; raises ``ValueError``. With ``check=False`` (CUDA graphs, torch.compile)
        the kernel still never reads out of bounds: bad positions make the loss NaN. The reference
        path always validates. NaN in the logits is not checked; it propagates to the loss.
    impl : {"auto", "triton", "ext", "reference"}
        ``"triton"``: the fused Triton kernel (CUDA tensors; CPU tensors in the interpreter,
        ``TRITON_INTERPRET=1``). ``"reference"``: the eager definition. ``"auto"``: Triton where it
        can run, else the reference. ``"ext"`` raises ``ValueError``: this op has no extension kernel
        (``generate`` / the trainer fall back to ``"auto"`` instead).
    block_v : int, optional
        Tuning override: vocabulary tile width of the kernel.

    Returns
    -------
    RMLoss
        ``(total, reveal, mask, keep)``, float32 scalars. Gradients flow from all four to
        ``logits``; the backward kernel writes ``dlogits`` (contiguous, ``logits.dtype``) from the
        saved per-row log-sum-exp, recomputing the softmax from the logits.

    Example
    -------
    >>> logits = torch.randn(4, 16, 50, requires_grad=True)   # [B, L, V]
    >>> labels = torch.randint(0, 50, (4, 16))
    >>> part = torch.randint(-1, 3, (4, 16))                   # -1 ignore, 0 reveal, 1 mask, 2 keep
    >>> part[0, 0] = 0
    >>> out = rm_loss(logits, labels, part, weights=(1.0, 1.0, 4.0))
    >>> out.total.backward()
    >>> bool(out.keep >= 0)
    True
    """
    check_tensor("logits", logits, dtypes=FLOAT_DTYPES, min_ndim=1)
    check_targets("logits", logits, labels, part)
    V = logits.shape[-1]
    if V == 0:
        raise ValueError("logits has an empty vocabulary dimension (V == 0)")
    weights = check_weights(weights)
    impl = resolve_impl("rm_loss", impl, logits.device)
    w_row = row_weights(part, weights)
    if check or impl == "reference":
        validate_rows(labels, part, w_row, V, weights)
    if impl == "reference":
        return rm_loss_reference(logits, labels, part, weights)
    ce, _ = torch.ops.rmkernels.rm_ce_fwd(logits, labels, part, block_v or 0)
    return RMLoss(weighted_total(ce, w_row), *part_means(ce, part))
