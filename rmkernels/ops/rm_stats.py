"""Fused Reflective Masking statistics: one read of the logits per position (docs/spec.md §1).

Kernel layout
-------------
* ``_rm_stats_fused_kernel``: one program per row streams the vocabulary in ``BLOCK_V`` tiles and
  keeps, per lane, a running max / sum (online softmax, float32) and two running argmaxes (full
  vocabulary and mask excluded; strict ``>`` so the first, lowest id wins ties). Lanes are reduced
  once at the end; ties between lanes go to the lowest id.
* Split-vocabulary path for few rows (FlashInfer style): ``_rm_stats_partial_kernel`` maps
  ``[N, S]`` programs over vocabulary slices and writes per-slice partials; ``_rm_stats_reduce_kernel``
  merges the ``S`` partials of each row.
* Both finish with four scalar gathers (``z[top]``, ``z[best]``, ``z[mask]``, ``z[cur]``) so the
  probabilities are exact ``exp(z - m) / s`` in float32. The current token is bounds-checked
  in the kernel: an out-of-range id is flagged in ``status`` and never dereferenced.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from rmkernels._utils import FLOAT_DTYPES, INT_DTYPES, check_index, check_same_device, check_tensor, resolve_impl
from rmkernels.ops._rows import pick_block, row_base, row_layout
from rmkernels.ops._triton_rng import gumbel, row_key
from rmkernels.reference.rm_stats import (
    STATUS_ALL_NEG_INF,
    STATUS_NAN,
    STATUS_TOKEN_RANGE,
    rm_stats_reference,
)
from rmkernels.reference.rng import row_counters, seed_key

__all__ = ["RMStats", "rm_stats"]


class RMStats(NamedTuple):
    """Per-position statistics, each shaped like ``tokens``.

    Attributes
    ----------
    top_id : int64      argmax (or Gumbel-max candidate) over the full vocabulary, mask included
    top_p : float32     ``p[top_id]``
    mask_p : float32    ``p[mask_id]``
    cur_p : float32     ``p[token]`` (equals ``mask_p`` where the token is the mask)
    best_id : int64     the same candidate with the mask id excluded
    best_p : float32    ``p[best_id]``
    """

    top_id: torch.Tensor
    top_p: torch.Tensor
    mask_p: torch.Tensor
    cur_p: torch.Tensor
    best_id: torch.Tensor
    best_p: torch.Tensor


# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def candidate_score(z, cols, inv_temp, rkey, SAMPLE: tl.constexpr):
    """The candidate score: the logit, or the Gumbel-perturbed logit / temperature."""
    if SAMPLE:
        return z * inv_temp + gumbel(rkey, cols)
    return z


@triton.jit
def _scan_slice(base, col_start, col_end, mask_id, inv_temp, rkey, SAMPLE: tl.constexpr, BLOCK_V: tl.constexpr):
    """Scan columns ``[col_start, col_end)`` of one row.

    Per lane it keeps four accumulators: the online-softmax max and sum, and the best (highest
    score, lowest id) column with the mask excluded. The argmax over the full vocabulary is derived
    at the end from that and the mask's own score, and a NaN anywhere makes the sum NaN, so no
    other state is needed (registers are what limits a streaming kernel's occupancy).
    """
    NEG_INF: tl.constexpr = float("-inf")
    lanes = tl.arange(0, BLOCK_V)
    m_vec = tl.full([BLOCK_V], NEG_INF, tl.float32)
    s_vec = tl.zeros([BLOCK_V], tl.float32)
    best_val = tl.full([BLOCK_V], NEG_INF, tl.float32)
    best_idx = col_start + lanes
    for start in range(col_start, col_end, BLOCK_V):
        cols = start + lanes
        valid = cols < col_end
        z = tl.load(base + cols, mask=valid, other=NEG_INF).to(tl.float32)
        # online softmax with one exp per element: e = exp(-|z - m|) scales whichever of the old sum
        # and the new element is not the new max; -inf elements add 0 and a NaN poisons the sum
        e = tl.where(z == NEG_INF, 0.0, tl.exp(-tl.abs(z - m_vec)))
        gt = z > m_vec
        s_vec = tl.where(gt, s_vec * e + 1.0, s_vec + e)
        m_vec = tl.where(gt, z, m_vec)
        score = tl.where(valid & (cols != mask_id), candidate_score(z, cols, inv_temp, rkey, SAMPLE), NEG_INF)
        up = score > best_val  # strict: the first (lowest) id of a lane keeps a tie
        best_val = tl.where(up, score, best_val)
        best_idx = tl.where(up, cols, best_idx)
    return _merge_partials(m_vec, s_vec, best_val, best_idx)


@triton.jit
def _merge_partials(m_p, s_p, best_val, best_idx):
    """Merge partials (the lanes of a slice, or the slices of a row): online-softmax max and sum,
    and the best column with ties to the lowest id."""
    NEG_INF: tl.constexpr = float("-inf")
    m = tl.max(m_p, axis=0)
    s = tl.sum(s_p * tl.where(m_p > NEG_INF, tl.exp(m_p - m), 0.0), axis=0)  # NaN partial sums survive
    bv = tl.max(best_val, axis=0)
    bi = tl.min(tl.where(best_val == bv, best_idx, 2147483647), axis=0)
    return m, s, bv, bi


@triton.jit
def _finalize(base, x_ptr, row, V, mask_id, m, s, bv, bi, inv_temp, rkey,
              top_id_ptr, top_p_ptr, mask_p_ptr, cur_p_ptr, best_id_ptr, best_p_ptr, status_ptr,
              SAMPLE: tl.constexpr):
    NEG_INF: tl.constexpr = float("-inf")
    x = tl.load(x_ptr + row).to(tl.int64)
    x_ok = (x >= 0) & (x < V)
    status = (s != s).to(tl.int32) * 1 + (m == NEG_INF).to(tl.int32) * 2 + (x_ok == 0).to(tl.int32) * 4
    bad = status != 0
    z_mask = tl.load(base + mask_id).to(tl.float32)
    # the full-vocabulary candidate: the mask when its score beats the best other column (ties: lower id)
    s_mask = candidate_score(z_mask, mask_id, inv_temp, rkey, SAMPLE)
    mask_wins = (s_mask > bv) | ((s_mask == bv) & (mask_id < bi))
    ti = tl.where(mask_wins, mask_id, bi)
    inv_s = 1.0 / s
    z_best = tl.load(base + bi).to(tl.float32)
    z_top = tl.where(mask_wins, z_mask, z_best)
    z_cur = tl.load(base + tl.where(x_ok, x, 0)).to(tl.float32)  # never out of bounds
    nan = float("nan")
    tl.store(top_id_ptr + row, tl.where(bad, -1, ti.to(tl.int64)))
    tl.store(best_id_ptr + row, tl.where(bad, -1, bi.to(tl.int64)))
    tl.store(top_p_ptr + row, tl.where(bad, nan, tl.exp(z_top - m) * inv_s))
    tl.store(best_p_ptr + row, tl.where(bad, nan, tl.exp(z_best - m) * inv_s))
    tl.store(mask_p_ptr + row, tl.where(bad, nan, tl.exp(z_mask - m) * inv_s))
    tl.store(cur_p_ptr + row, tl.where(bad, nan, tl.exp(z_cur - m) * inv_s))
    tl.store(status_ptr + row, status)


@triton.jit(do_not_specialize=["mask_id", "seed_key"])
def _rm_stats_fused_kernel(
    z_ptr, x_ptr, ctr_ptr,
    top_id_ptr, top_p_ptr, mask_p_ptr, cur_p_ptr, best_id_ptr, best_p_ptr, status_ptr,
    V, L1, stride0, stride1, mask_id, inv_temp, seed_key,
    SAMPLE: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0)
    base = row_base(z_ptr, row, L1, stride0, stride1)
    rkey = row_key(seed_key.to(tl.uint32), tl.load(ctr_ptr + row)) if SAMPLE else 0
    m, s, bv, bi = _scan_slice(base, 0, V, mask_id, inv_temp, rkey, SAMPLE, BLOCK_V)
    _finalize(base, x_ptr, row, V, mask_id, m, s, bv, bi, inv_temp, rkey,
              top_id_ptr, top_p_ptr, mask_p_ptr, cur_p_ptr, best_id_ptr, best_p_ptr, status_ptr, SAMPLE)


@triton.jit(do_not_specialize=["mask_id", "seed_key"])
def _rm_stats_partial_kernel(
    z_ptr, ctr_ptr, part_f_ptr, part_i_ptr,
    V, L1, stride0, stride1, mask_id, inv_temp, seed_key, CHUNK, S,
    SAMPLE: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0)
    split = tl.program_id(1)
    base = row_base(z_ptr, row, L1, stride0, stride1)
    rkey = row_key(seed_key.to(tl.uint32), tl.load(ctr_ptr + row)) if SAMPLE else 0
    col_start = split * CHUNK
    col_end = tl.minimum(col_start + CHUNK, V)
    m, s, bv, bi = _scan_slice(base, col_start, col_end, mask_id, inv_temp, rkey, SAMPLE, BLOCK_V)
    slot = row.to(tl.int64) * S + split
    tl.store(part_f_ptr + slot * 3 + 0, m)  # [N, S, 3] float32: max, sum, best score
    tl.store(part_f_ptr + slot * 3 + 1, s)
    tl.store(part_f_ptr + slot * 3 + 2, bv)
    tl.store(part_i_ptr + slot, bi)  # [N, S] int32: best id


@triton.jit(do_not_specialize=["mask_id", "seed_key"])
def _rm_stats_reduce_kernel(
    z_ptr, x_ptr, ctr_ptr, part_f_ptr, part_i_ptr,
    top_id_ptr, top_p_ptr, mask_p_ptr, cur_p_ptr, best_id_ptr, best_p_ptr, status_ptr,
    V, L1, stride0, stride1, mask_id, inv_temp, seed_key, S,
    SAMPLE: tl.constexpr, BLOCK_S: tl.constexpr,
):
    NEG_INF: tl.constexpr = float("-inf")
    row = tl.program_id(0)
    base = row_base(z_ptr, row, L1, stride0, stride1)
    rkey = row_key(seed_key.to(tl.uint32), tl.load(ctr_ptr + row)) if SAMPLE else 0
    sp = tl.arange(0, BLOCK_S)
    ok = sp < S
    slot = row.to(tl.int64) * S + sp
    m_s = tl.load(part_f_ptr + slot * 3 + 0, mask=ok, other=NEG_INF)
    s_s = tl.load(part_f_ptr + slot * 3 + 1, mask=ok, other=0.0)
    bv_s = tl.load(part_f_ptr + slot * 3 + 2, mask=ok, other=NEG_INF)
    bi_s = tl.load(part_i_ptr + slot, mask=ok, other=2147483647)
    m, s, bv, bi = _merge_partials(m_s, s_s, bv_s, bi_s)
    _finalize(base, x_ptr, row, V, mask_id, m, s, bv, bi, inv_temp, rkey,
              top_id_ptr, top_p_ptr, mask_p_ptr, cur_p_ptr, best_id_ptr, best_p_ptr, status_ptr, SAMPLE)


# ----------------------------------------------------------------------------------------------
# Launcher and registered op
# ----------------------------------------------------------------------------------------------
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: any small number exercises the same logic


def _plan(N: int, V: int, block_v: int, device: torch.device, split: int | None) -> int:
    """Number of vocabulary slices per row (1 = the single-pass kernel)."""
    if split is not None:
        return max(1, min(int(split), triton.cdiv(V, block_v)))
    sms = _num_sms(device)
    tiles = triton.cdiv(V, block_v)
    if N >= 2 * sms or tiles < 4:
        return 1
    return max(1, min(tiles, triton.cdiv(4 * sms, N), 256))


def _new_output(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocate a kernel output (tests replace this to poison outputs before the launch)."""
    return torch.empty(n, dtype=dtype, device=device)


def _alloc_outputs(n: int, device: torch.device):
    """``(top_id, top_p, mask_p, cur_p, best_id, best_p, status)``, each ``[n]``."""
    i64, f32 = torch.int64, torch.float32
    return tuple(_new_output(n, dt, device) for dt in (i64, f32, f32, f32, i64, f32, torch.int32))


@torch.library.custom_op("rmkernels::rm_stats_triton", mutates_args=())
def _rm_stats_triton(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    counters: torch.Tensor,
    mask_id: int,
    temperature: float,
    seed_key: int,
    split: int,
    block_v: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    V = logits.shape[-1]
    z, N, L1, st0, st1 = row_layout(logits)
    device = logits.device
    # the kernels index tokens and counters as contiguous [N] vectors: a strided view (tokens[:, ::2],
    # x[:, 0]) keeps its strides through reshape(-1), so normalise (N elements, nothing next to the
    # N x V logits)
    x = tokens.reshape(-1).contiguous()
    counters = counters.reshape(-1).contiguous()
    outs = _alloc_outputs(N, device)
    if N == 0:
        return outs
    sample = temperature > 0
    inv_temp = 1.0 / temperature if sample else 1.0
    block = block_v if block_v > 0 else pick_block(V)
    S = _plan(N, V, block, device, split if split > 0 else None)
    nw = 8 if block >= 2048 else 4
    if S == 1:
        _rm_stats_fused_kernel[(N,)](
            z, x, counters, *outs, V, L1, st0, st1, mask_id, inv_temp, seed_key,
            SAMPLE=sample, BLOCK_V=block, num_warps=nw,
        )
    else:
        chunk = triton.cdiv(triton.cdiv(V, S), block) * block
        S = triton.cdiv(V, chunk)
        part_f = torch.empty((N, S, 3), dtype=torch.float32, device=device)
        part_i = torch.empty((N, S), dtype=torch.int32, device=device)
        _rm_stats_partial_kernel[(N, S)](
            z, counters, part_f, part_i, V, L1, st0, st1, mask_id, inv_temp, seed_key, chunk, S,
            SAMPLE=sample, BLOCK_V=block, num_warps=nw,
        )
        _rm_stats_reduce_kernel[(N,)](
            z, x, counters, part_f, part_i, *outs, V, L1, st0, st1, mask_id, inv_temp, seed_key, S,
            SAMPLE=sample, BLOCK_S=max(16, triton.next_power_of_2(S)), num_warps=1,
        )
    return outs


@_rm_stats_triton.register_fake
def _(logits, tokens, counters, mask_id, temperature, seed_key, split, block_v):
    N = tokens.numel()
    f = lambda dt: logits.new_empty((N,), dtype=dt)  # noqa: E731
    return f(torch.int64), f(torch.float32), f(torch.float32), f(torch.float32), f(torch.int64), f(torch.float32), f(torch.int32)


def _raise_on_status(status: torch.Tensor) -> None:
    """One host synchronisation: raise ValueError naming the argument if any row was flagged."""
    bits = (STATUS_TOKEN_RANGE, STATUS_NAN, STATUS_ALL_NEG_INF)
    bit_t = torch.tensor(bits, dtype=status.dtype, device=status.device)
    present = ((status[:, None] & bit_t) != 0).any(0).tolist()
    if not any(present):
        return
    rows = lambda bit: torch.nonzero(status & bit).flatten()[:5].tolist()  # noqa: E731
    if present[0]:
        raise ValueError(f"tokens holds ids outside [0, V) (first bad flattened rows: {rows(STATUS_TOKEN_RANGE)})")
    if present[1]:
        raise ValueError(f"logits contains NaN (first bad flattened rows: {rows(STATUS_NAN)})")
    raise ValueError(f"logits has rows that are entirely -inf (first bad flattened rows: {rows(STATUS_ALL_NEG_INF)})")


def rm_stats(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    mask_id: int,
    *,
    temperature: float = 0.0,
    seed: int | None = None,
    offset: int | torch.Tensor = 0,
    check: bool = True,
    impl: str = "auto",
    split: int | None = None,
    block_v: int | None = None,
) -> RMStats:
    """Per-position Reflective Masking statistics in one pass over the logits (docs/spec.md §1).

    Parameters
    ----------
    logits : Tensor ``[..., V]``
        float32, float16 or bfloat16; any leading shape; rows may be strided.
    tokens : Tensor ``[...]``
        Current token ids, integer, shape ``logits.shape[:-1]``.
    mask_id : int
        The mask token id, in ``[0, V)``.
    temperature : float
        ``0`` = argmax candidates; ``> 0`` = Gumbel-max candidates on ``logits / temperature``
        drawn from a counter-based RNG inside the kernel (probabilities stay ``softmax(logits)``).
    seed : int, optional
        RNG seed for ``temperature > 0`` (drawn from torch's default generator when ``None``).
    offset : int or Tensor
        RNG counter: an int gives row ``r`` the counter ``offset + r``; an int64 tensor shaped like
        ``tokens`` gives each row its own counter (e.g. keyed by position and step, so samples do
        not depend on batch composition).
    check : bool
        Validate token range / NaN / all ``-inf`` rows. The kernel computes these flags during its
        single pass (no extra read of the logits); ``check=True`` costs one host synchronisation to
        inspect them and raises ``ValueError``. With ``check=False`` (CUDA graphs, torch.compile,
        decoding loops) bad rows get ids ``-1`` and probabilities NaN, never an out-of-bounds read.
    impl : {"auto", "triton", "ext", "reference"}
        ``"triton"``: the Triton kernel (CUDA tensors; CPU tensors in the interpreter,
        ``TRITON_INTERPRET=1``). ``"ext"``: the C++ CPU kernel of ``rmkernels._C``. ``"reference"``:
        the eager definition. ``"auto"``: the first of Triton, ext, reference that can run on the
        tensors' device (``rmkernels._utils.IMPL_TABLE``). A kernel that cannot run there raises
        ``ValueError``.
    split, block_v : int, optional
        Tuning overrides: number of vocabulary slices per row (1 = single pass) and tile width.

    Returns
    -------
    RMStats
        ``top_id, top_p, mask_p, cur_p, best_id, best_p`` shaped like ``tokens``.

    Example
    -------
    >>> logits = torch.randn(2, 5, 100)                      # [B, L, V]
    >>> tokens = torch.randint(0, 100, (2, 5))
    >>> st = rm_stats(logits, tokens, mask_id=99)
    >>> remask = (tokens != 99) & (st.mask_p > st.cur_p)     # the RM re-mask rule, docs/spec.md §2
    >>> st.top_id.shape
    torch.Size([2, 5])
    """
    check_tensor("logits", logits, dtypes=FLOAT_DTYPES, min_ndim=1)
    check_tensor("tokens", tokens, dtypes=INT_DTYPES)
    check_same_device(logits=logits, tokens=tokens)
    if tuple(tokens.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"tokens shape {tuple(tokens.shape)} must equal logits.shape[:-1] = {tuple(logits.shape[:-1])}")
    V = logits.shape[-1]
    if V == 0:
        raise ValueError("logits has an empty vocabulary dimension (V == 0)")
    mask_id = check_index("mask_id", mask_id, V)
    temperature = float(temperature)
    if not temperature >= 0 or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if isinstance(offset, torch.Tensor):
        check_tensor("offset", offset, dtypes=INT_DTYPES)
        check_same_device(logits=logits, offset=offset)
        if tuple(offset.shape) != tuple(tokens.shape):
            raise ValueError(f"offset tensor shape {tuple(offset.shape)} must equal tokens shape {tuple(tokens.shape)}")
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item()) if temperature > 0 else 0
    impl = resolve_impl("rm_stats", impl, logits.device)

    shape = tokens.shape
    if impl == "reference":
        out = rm_stats_reference(logits, tokens, mask_id, temperature=temperature, seed=seed, offset=offset)
    elif impl == "ext":
        z, N, L1, st0, st1 = row_layout(logits)
        counters = row_counters(N, offset, logits.device).contiguous()
        x = tokens.reshape(-1).to(torch.int64).contiguous()
        out = _alloc_outputs(N, logits.device)
        torch.ops.rmkernels.rm_stats_cpu_out(z, x, counters, L1, st0, st1, mask_id, temperature, seed_key(seed), *out)
    else:
        counters = row_counters(tokens.numel(), offset, logits.device)
        out = torch.ops.rmkernels.rm_stats_triton(
            logits, tokens, counters, mask_id, temperature, seed_key(seed), split or 0, block_v or 0
        )
    *stats, status = out
    if check:
        _raise_on_status(status)
    return RMStats(*(t.reshape(shape) for t in stats))
