"""Fused LM head + Reflective Masking statistics: the ``[N, V]`` logits are never written (docs/spec.md §9).

``rm_linear_stats(hidden, lm_weight, tokens, mask_id)`` returns what
``rm_stats(hidden @ lm_weight.T, tokens, mask_id)`` returns, computing the logits tile by tile.

Triton (CUDA, or the interpreter)
---------------------------------
``_lstats_partial_kernel``: program ``(i, j)`` takes rows ``[i * BLOCK_N, (i + 1) * BLOCK_N)`` and
vocabulary slice ``j`` (``chunk`` columns). For each ``BLOCK_V`` tile of its slice it computes the
logits tile ``[BLOCK_N, BLOCK_V]`` with ``tl.dot`` over ``BLOCK_K`` steps of ``D`` (float32
accumulation; float32 inputs in IEEE precision unless ``allow_tf32``), applies bias, scale and
suppression, and folds the tile into per-row registers: online-softmax max and sum, the best
(mask-excluded) score with its id and logit (strict ``>`` across tiles, lowest id within a tile, so
the lowest id wins ties), and the mask and current-token logits as their tiles pass. It writes
these partials per (row, slice); ``_lstats_reduce_kernel`` merges the slices of each row and
finishes the probabilities ``exp(z - m) / s``, the full-vocabulary candidate (the mask or the best
other column, ties to the lower id) and the status flags.
Few rows (decode) split the vocabulary over many slices so the GPU is full (map/reduce); many rows
use few slices. Tile sizes are autotuned per (row bucket, D, V, dtype, sampling).

CPU (``impl="ext"``)
--------------------
Vocabulary chunks: ``z = hidden @ W[c0:c1].T`` into one reused ``[N, C]`` float32 buffer, then the
C++ pass ``linear_stats_chunk_cpu_`` folds the chunk into the same per-row state, merged across
chunks; at most one chunk of logits is alive. Without the extension the same chunks are folded by
torch code (:func:`_fold_chunk_torch`).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from rmkernels import _utils
from rmkernels._ext import extension_available
from rmkernels._utils import FLOAT_DTYPES, INT_DTYPES, check_index, check_same_device, check_tensor
from rmkernels.ops._triton_rng import row_key
from rmkernels.ops.rm_stats import RMStats, candidate_score
from rmkernels.reference.linear_stats import rm_linear_stats_reference
from rmkernels.reference.rm_stats import STATUS_ALL_NEG_INF, STATUS_NAN, STATUS_TOKEN_RANGE
from rmkernels.reference.rng import gumbel_noise, row_counters, seed_key

__all__ = ["rm_linear_stats"]

_INT_MAX = tl.constexpr(2147483647)
_N_PART_F = 3  # float partials per (slice, row): max, sum, best score


# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------
# Integer arguments whose value may be 1 or a multiple of 16 would be specialised by the JIT (to a
# constexpr, or with a divisibility hint), compiling a new variant per value class and, for a
# constexpr, changing the types the body sees: the value-like ones are never specialised. D and the
# two row strides are layout: their divisibility by 16 is what lets the tiles load 16-byte vectors
# asynchronously, so they keep the JIT's specialisation (tools/triton_aot.py compiles those variants).
_PARTIAL_NO_SPEC = ["N", "V", "mask_id", "chunk", "n_bucket", "seed_key"]
_REDUCE_NO_SPEC = ["N", "V", "mask_id", "S", "seed_key"]


@triton.jit(do_not_specialize=_PARTIAL_NO_SPEC)
def _lstats_partial_kernel(
    h_ptr, w_ptr, b_ptr, sup_ptr, ctr_ptr, part_f_ptr, part_i_ptr,
    N, D, V, mask_id, chunk, n_bucket, stride_hn, stride_wv,
    logit_scale, inv_temp, seed_key,
    HAS_BIAS: tl.constexpr, HAS_SUPPRESS: tl.constexpr, SAMPLE: tl.constexpr, PRECISION: tl.constexpr,
    INTERPRET: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Partials of rows ``[pid0 * BLOCK_N, ...)`` over vocabulary slice ``pid1``: max, sum, best
    (mask-excluded) score and id. The epilogue holds only what the online merge needs: the mask,
    current-token and sampled-best logits are recomputed per row by the reduce kernel."""
    NEG_INF: tl.constexpr = float("-inf")
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    S = tl.num_programs(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    if SAMPLE:
        rkey = row_key(seed_key.to(tl.uint32), tl.load(ctr_ptr + rows64, mask=row_ok, other=0))[:, None]
    else:
        rkey = 0
    col_start = split * chunk
    col_end = tl.minimum(col_start + chunk, V)
    lanes_v = tl.arange(0, BLOCK_V)
    lanes_k = tl.arange(0, BLOCK_K)
    h_rows = h_ptr + rows64[:, None] * stride_hn  # [BLOCK_N, 1]

    m = tl.full([BLOCK_N], NEG_INF, tl.float32)
    s = tl.zeros([BLOCK_N], tl.float32)
    bv = tl.full([BLOCK_N], NEG_INF, tl.float32)
    bi = tl.zeros([BLOCK_N], tl.int32) + col_start
    for v0 in range(col_start, col_end, BLOCK_V):
        cols = v0 + lanes_v
        col_ok = cols < col_end
        w_cols = w_ptr + cols.to(tl.int64)[None, :] * stride_wv  # [1, BLOCK_V]
        acc = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
        for k0 in range(0, D, BLOCK_K):
            ks = k0 + lanes_k
            k_ok = ks < D
            a = tl.load(h_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_N, BLOCK_K]
            b = tl.load(w_cols + ks[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)  # [BLOCK_K, BLOCK_V]
            if INTERPRET:  # the interpreter's tl.dot mishandles bfloat16 operands (Triton 3.x)
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        z = acc
        if HAS_BIAS:
            z += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        z = z * logit_scale
        if HAS_SUPPRESS:
            sup = tl.load(sup_ptr + cols, mask=col_ok, other=0)
            z = tl.where(sup[None, :] != 0, NEG_INF, z)
        z = tl.where(col_ok[None, :], z, NEG_INF)
        # best candidate with the mask excluded: lowest id within the tile, strict > across tiles
        score = tl.where(cols[None, :] == mask_id, NEG_INF, candidate_score(z, cols[None, :], inv_temp, rkey, SAMPLE))
        if INTERPRET:  # its argmax (numpy's nanargmax) raises on an all-NaN row; such rows are flagged anyway
            score = tl.where(score != score, NEG_INF, score)
        t_bv, t_arg = tl.max(score, axis=1, return_indices=True, return_indices_tie_break_left=True)
        t_bi = v0 + t_arg
        up = t_bv > bv
        bv = tl.where(up, t_bv, bv)
        bi = tl.where(up, t_bi, bi)
        # online softmax (a NaN anywhere makes the sum NaN: the status flag)
        m_new = tl.maximum(m, tl.max(z, axis=1))
        m_safe = tl.where(m_new == NEG_INF, 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(z - m_safe[:, None]), axis=1)
        m = m_new

    slot = split.to(tl.int64) * N + rows64  # partials [k, S, N]
    plane = S.to(tl.int64) * N
    tl.store(part_f_ptr + slot, m, mask=row_ok)
    tl.store(part_f_ptr + plane + slot, s, mask=row_ok)
    tl.store(part_f_ptr + 2 * plane + slot, bv, mask=row_ok)
    tl.store(part_i_ptr + slot, bi, mask=row_ok)


@triton.jit
def _gather_logit(acc, ids, b_ptr, sup_ptr, logit_scale, ok, HAS_BIAS: tl.constexpr, HAS_SUPPRESS: tl.constexpr):
    """``(acc + b[ids]) * logit_scale``, ``-inf`` where ``ids`` is suppressed."""
    z = acc
    if HAS_BIAS:
        z += tl.load(b_ptr + ids, mask=ok, other=0.0).to(tl.float32)
    z = z * logit_scale
    if HAS_SUPPRESS:
        z = tl.where(tl.load(sup_ptr + ids, mask=ok, other=0) != 0, float("-inf"), z)
    return z


@triton.jit(do_not_specialize=_REDUCE_NO_SPEC)
def _lstats_reduce_kernel(
    part_f_ptr, part_i_ptr, h_ptr, w_ptr, b_ptr, sup_ptr, x_ptr, ctr_ptr,
    top_id_ptr, top_p_ptr, mask_p_ptr, cur_p_ptr, best_id_ptr, best_p_ptr, status_ptr,
    N, D, V, mask_id, S, stride_hn, stride_wv, logit_scale, inv_temp, seed_key,
    HAS_BIAS: tl.constexpr, HAS_SUPPRESS: tl.constexpr, SAMPLE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Merge the ``S`` slices of ``BLOCK_R`` rows, compute the mask, current-token (and, when
    sampling, best) logits as row dot products, then the candidates, probabilities and status."""
    NEG_INF: tl.constexpr = float("-inf")
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    sp = tl.arange(0, BLOCK_S)
    ok = (sp[:, None] < S) & row_ok[None, :]  # [BLOCK_S, BLOCK_R]
    slot = sp.to(tl.int64)[:, None] * N + rows64[None, :]
    plane = S.to(tl.int64) * N
    m_s = tl.load(part_f_ptr + slot, mask=ok, other=NEG_INF)
    s_s = tl.load(part_f_ptr + plane + slot, mask=ok, other=0.0)
    bv_s = tl.load(part_f_ptr + 2 * plane + slot, mask=ok, other=NEG_INF)
    bi_s = tl.load(part_i_ptr + slot, mask=ok, other=_INT_MAX)
    m = tl.max(m_s, axis=0)
    s = tl.sum(s_s * tl.where(m_s > NEG_INF, tl.exp(m_s - m[None, :]), 0.0), axis=0)  # NaN partial sums survive
    bv = tl.max(bv_s, axis=0)
    bi = tl.min(tl.where(bv_s == bv[None, :], bi_s, _INT_MAX), axis=0)
    bi = tl.where(row_ok, bi, 0)

    x = tl.load(x_ptr + rows64, mask=row_ok, other=0)
    x_ok = (x >= 0) & (x < V)
    xs = tl.where(x_ok, x, 0)  # never out of bounds
    mcol = tl.zeros([BLOCK_R], tl.int32) + mask_id  # a tensor, whatever the JIT made of mask_id
    # the mask, current-token and (sampling) best logits: one dot product of D per row each
    lanes_d = tl.arange(0, BLOCK_D)
    acc_m = tl.zeros([BLOCK_R], tl.float32)
    acc_c = tl.zeros([BLOCK_R], tl.float32)
    acc_b = tl.zeros([BLOCK_R], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + lanes_d
        ld = row_ok[:, None] & (ds < D)[None, :]
        hv = tl.load(h_ptr + rows64[:, None] * stride_hn + ds[None, :], mask=ld, other=0.0).to(tl.float32)
        wm = tl.load(w_ptr + mcol.to(tl.int64)[:, None] * stride_wv + ds[None, :], mask=ld, other=0.0).to(tl.float32)
        acc_m += tl.sum(hv * wm, axis=1)
        wc = tl.load(w_ptr + xs[:, None] * stride_wv + ds[None, :], mask=ld, other=0.0).to(tl.float32)
        acc_c += tl.sum(hv * wc, axis=1)
        if SAMPLE:
            wb = tl.load(w_ptr + bi.to(tl.int64)[:, None] * stride_wv + ds[None, :], mask=ld, other=0.0).to(tl.float32)
            acc_b += tl.sum(hv * wb, axis=1)
    z_mask = _gather_logit(acc_m, mcol, b_ptr, sup_ptr, logit_scale, row_ok, HAS_BIAS, HAS_SUPPRESS)
    z_cur = _gather_logit(acc_c, xs, b_ptr, sup_ptr, logit_scale, row_ok, HAS_BIAS, HAS_SUPPRESS)
    if SAMPLE:
        z_best = _gather_logit(acc_b, bi, b_ptr, sup_ptr, logit_scale, row_ok, HAS_BIAS, HAS_SUPPRESS)
    else:
        z_best = bv
    # no finite non-mask column: the best id is column 0 (torch.argmax of -inf), maybe the mask itself
    z_best = tl.where((bv == NEG_INF) & (bi == mcol), z_mask, z_best)

    status = (s != s).to(tl.int32) * 1 + (m == NEG_INF).to(tl.int32) * 2 + (x_ok == 0).to(tl.int32) * 4
    bad = status != 0
    if SAMPLE:
        rkey = row_key(seed_key.to(tl.uint32), tl.load(ctr_ptr + rows64, mask=row_ok, other=0))
    else:
        rkey = 0
    s_mask = candidate_score(z_mask, mcol, inv_temp, rkey, SAMPLE)
    mask_wins = (s_mask > bv) | ((s_mask == bv) & (mcol < bi))
    ti = tl.where(mask_wins, mcol, bi)
    z_top = tl.where(mask_wins, z_mask, z_best)
    inv_s = 1.0 / s
    nan = float("nan")
    tl.store(top_id_ptr + rows64, tl.where(bad, -1, ti.to(tl.int64)), mask=row_ok)
    tl.store(best_id_ptr + rows64, tl.where(bad, -1, bi.to(tl.int64)), mask=row_ok)
    tl.store(top_p_ptr + rows64, tl.where(bad, nan, tl.exp(z_top - m) * inv_s), mask=row_ok)
    tl.store(best_p_ptr + rows64, tl.where(bad, nan, tl.exp(z_best - m) * inv_s), mask=row_ok)
    tl.store(mask_p_ptr + rows64, tl.where(bad, nan, tl.exp(z_mask - m) * inv_s), mask=row_ok)
    tl.store(cur_p_ptr + rows64, tl.where(bad, nan, tl.exp(z_cur - m) * inv_s), mask=row_ok)
    tl.store(status_ptr + rows64, status, mask=row_ok)


# ----------------------------------------------------------------------------------------------
# Tuning: the row tile comes from N, the rest is autotuned on the GPU
# ----------------------------------------------------------------------------------------------
# (BLOCK_N, kind) -> [(BLOCK_V, BLOCK_K, num_warps, num_stages)], each checked by tools/triton_aot.py
# to compile for sm_80 and sm_90 without register spills. kinds: "argmax" (16-bit inputs, temperature
# 0: at most 64 accumulator registers per thread, BLOCK_N * BLOCK_V / (32 * num_warps)), "sample"
# (the Gumbel epilogue: at most 32), "fp32" (float32 inputs: tl.dot keeps its operands in registers,
# so narrow K steps), "unaligned" (D or a row stride not a multiple of 16 elements: no asynchronous
# copies to pipeline, small tiles).
_TABLE = {
    # few rows: reading the weight is the cost; deep pipelines keep many loads in flight
    (16, "argmax"): [(128, 64, 4, 4), (256, 64, 4, 3), (64, 128, 4, 4)],
    (32, "argmax"): [(128, 64, 8, 4), (256, 64, 8, 3), (64, 128, 4, 4)],
    (64, "argmax"): [(128, 64, 8, 4), (256, 64, 8, 3), (64, 64, 4, 4)],
    # many rows: a tensor-core GEMM with a statistics epilogue per vocabulary tile
    (128, "argmax"): [(128, 64, 8, 3), (128, 64, 8, 4), (128, 32, 8, 5)],
    (64, "sample"): [(128, 64, 8, 4), (64, 64, 4, 4)],
    (128, "sample"): [(64, 64, 8, 3), (64, 64, 8, 4), (64, 32, 8, 4)],
    (16, "fp32"): [(64, 32, 4, 3), (128, 32, 4, 3)],
    (32, "fp32"): [(64, 32, 4, 3), (64, 16, 4, 4)],
    (64, "fp32"): [(64, 16, 4, 4), (64, 16, 8, 3)],
    (128, "fp32"): [(64, 16, 8, 4), (64, 16, 8, 3)],
    (16, "unaligned"): [(64, 16, 4, 1)],
    (32, "unaligned"): [(64, 16, 4, 1)],
    (64, "unaligned"): [(64, 16, 4, 1)],
    (128, "unaligned"): [(64, 16, 8, 1)],
}
for _bn in (16, 32):
    _TABLE[(_bn, "sample")] = _TABLE[(_bn, "argmax")]
_ALL_CONFIGS = [triton.Config({"BLOCK_V": bv, "BLOCK_K": bk}, num_warps=w, num_stages=st)
                for bv, bk, w, st in dict.fromkeys(c for t in _TABLE.values() for c in t)]
_ALIGN = 256  # vocabulary slices start on a multiple of every BLOCK_V
# the interpreter runs one fixed small config (tests override it to cross tile boundaries)
_INTERPRET_BLOCKS = (16, 32, 16)


def _block_n(N: int) -> int:
    """Rows per program (the smallest tl.dot tile that holds few rows; 128 for many)."""
    for bn in (16, 32, 64):
        if N <= bn:
            return bn
    return 128


def _shape(c):
    return c.kwargs["BLOCK_V"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages


def _kind(named_args, sample: bool) -> str:
    if any(int(named_args[k]) % 16 for k in ("D", "stride_hn", "stride_wv")):
        return "unaligned"
    if named_args["h_ptr"].element_size() == 4:
        return "fp32"
    return "sample" if sample else "argmax"


def _prune(configs, named_args, **kwargs):
    """The configs of this row tile and kind (see ``_TABLE``)."""
    table = _TABLE[(kwargs["BLOCK_N"], _kind(named_args, kwargs["SAMPLE"]))]
    return [c for c in configs if _shape(c) in table]


_lstats_partial_tuned = triton.autotune(
    configs=_ALL_CONFIGS,
    key=["n_bucket", "D", "V", "stride_hn", "stride_wv", "SAMPLE", "HAS_BIAS", "HAS_SUPPRESS", "PRECISION"],
    prune_configs_by={"early_config_prune": _prune},
)(_lstats_partial_kernel)


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: any small number exercises the same logic


def _plan(N: int, V: int, block_n: int, align: int, device: torch.device, split: int | None):
    """``(chunk, S)``: vocabulary columns per slice and the number of slices. Enough programs for
    two waves over the SMs, slices aligned to ``align`` columns."""
    tiles = triton.cdiv(V, align)
    if split is not None:
        S = max(1, min(int(split), triton.cdiv(V, 1)))
    else:
        row_blocks = triton.cdiv(N, block_n)
        S = max(1, min(tiles, triton.cdiv(2 * _num_sms(device), row_blocks)))
    chunk = triton.cdiv(triton.cdiv(V, S), align) * align
    return chunk, triton.cdiv(V, chunk)


def _new_output(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocate a kernel output (tests replace this to poison outputs before the launch)."""
    return torch.empty(n, dtype=dtype, device=device)


def _new_partial(shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocate a partials buffer of the split kernel (tests poison it)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _alloc_outputs(n: int, device: torch.device):
    """``(top_id, top_p, mask_p, cur_p, best_id, best_p, status)``, each ``[n]``."""
    i64, f32 = torch.int64, torch.float32
    return tuple(_new_output(n, dt, device) for dt in (i64, f32, f32, f32, i64, f32, torch.int32))


@torch.library.custom_op("rmkernels::linear_stats_triton", mutates_args=())
def _linear_stats_triton(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    suppress: torch.Tensor | None,
    tokens: torch.Tensor,
    counters: torch.Tensor,
    vocab_size: int,
    mask_id: int,
    logit_scale: float,
    temperature: float,
    seed_key: int,
    allow_tf32: bool,
    split: int,
    block_n: int,
    block_v: int,
    block_k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``hidden [N, D]`` and ``weight [V', D]`` with unit last stride; ``bias [V']``; ``suppress``
    int8 ``[V]`` (1 = -inf); ``tokens`` / ``counters`` int64 ``[N]`` contiguous. ``split`` /
    ``block_*``: 0 = automatic."""
    N, D = hidden.shape
    V = vocab_size
    device = hidden.device
    # the kernels read rows through one stride and a unit last stride, tokens / counters as contiguous
    # vectors: normalise whatever the caller passed (the public function already did)
    if hidden.stride(-1) != 1:
        hidden = hidden.contiguous()
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    tokens, counters = tokens.reshape(-1).contiguous(), counters.reshape(-1).contiguous()
    bias = None if bias is None else bias.contiguous()
    suppress = None if suppress is None else suppress.contiguous()
    outs = _alloc_outputs(N, device)
    if N == 0:
        return outs
    sample = temperature > 0
    inv_temp = 1.0 / temperature if sample else 1.0
    precision = "tf32" if (allow_tf32 or hidden.dtype != torch.float32) else "ieee"
    # the environment, not _utils.triton_interpret(): tools/triton_aot.py patches that to reach this
    # launcher on CPU tensors and must see the GPU's code path
    interp = os.environ.get("TRITON_INTERPRET", "0") == "1"
    fixed = interp or (block_v > 0 and block_k > 0)
    if interp:
        bn, bv, bk = (block_n or _INTERPRET_BLOCKS[0], block_v or _INTERPRET_BLOCKS[1], block_k or _INTERPRET_BLOCKS[2])
    else:
        bn, bv, bk = block_n or _block_n(N), block_v, block_k
    align = bv if fixed else _ALIGN
    chunk, S = _plan(N, V, bn, align, device, split if split > 0 else None)
    part_f = _new_partial((_N_PART_F, S, N), torch.float32, device)
    part_i = _new_partial((S, N), torch.int32, device)
    b_arg = bias if bias is not None else hidden  # never read without HAS_BIAS
    sup_arg = suppress if suppress is not None else hidden
    common = dict(HAS_BIAS=bias is not None, HAS_SUPPRESS=suppress is not None, SAMPLE=sample)
    args = (hidden, weight, b_arg, sup_arg, counters, part_f, part_i,
            N, D, V, mask_id, chunk, triton.next_power_of_2(N), hidden.stride(0), weight.stride(0), logit_scale, inv_temp,
            seed_key)
    meta = dict(common, PRECISION="ieee" if interp else precision, INTERPRET=interp, BLOCK_N=bn)
    grid = (triton.cdiv(N, bn), S)
    if fixed:
        _lstats_partial_kernel[grid](*args, **meta, BLOCK_V=bv, BLOCK_K=bk, num_warps=4)
    else:
        _lstats_partial_tuned[grid](*args, **meta)
    block_s = max(2, triton.next_power_of_2(S))
    block_r = max(1, min(64 if interp else 16, 1024 // block_s))
    block_d = 16 if interp else 128
    _lstats_reduce_kernel[(triton.cdiv(N, block_r),)](
        part_f, part_i, hidden, weight, b_arg, sup_arg, tokens, counters, *outs,
        N, D, V, mask_id, S, hidden.stride(0), weight.stride(0), logit_scale, inv_temp, seed_key,
        **common, BLOCK_R=block_r, BLOCK_S=block_s, BLOCK_D=block_d, num_warps=4,
    )
    return outs


@_linear_stats_triton.register_fake
def _(hidden, weight, bias, suppress, tokens, counters, vocab_size, mask_id, logit_scale, temperature, seed_key,
      allow_tf32, split, block_n, block_v, block_k):
    N = hidden.shape[0]
    f = lambda dt: hidden.new_empty((N,), dtype=dt)  # noqa: E731
    return f(torch.int64), f(torch.float32), f(torch.float32), f(torch.float32), f(torch.int64), f(torch.float32), f(torch.int32)


def _chunk_op_available() -> bool:
    """True when rmkernels._C is built and holds the C++ chunk pass (a build older than this op does not)."""
    if not extension_available("cpu"):
        return False
    try:
        torch.ops.rmkernels.linear_stats_chunk_cpu_
    except (AttributeError, RuntimeError):
        return False
    return True


if _chunk_op_available():
    @torch.library.register_fake("rmkernels::linear_stats_chunk_cpu_")
    def _(z, col0, tokens, counters, mask_id, temperature, seed_key, state, best_id):
        return None


# ----------------------------------------------------------------------------------------------
# CPU: vocabulary chunks
# ----------------------------------------------------------------------------------------------
_S_M, _S_S, _S_BV, _S_BZ, _S_ZM, _S_SM, _S_ZC = range(7)


def _cpu_state(N: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The running per-row state ``[N, 8]`` float64 (see csrc/rm_stats_cpu.cpp) and best ids ``[N]``."""
    st = torch.full((N, 8), float("-inf"), dtype=torch.float64, device=device)
    st[:, _S_S] = 0.0
    return st, torch.zeros(N, dtype=torch.int64, device=device)


def _fold_chunk_torch(z, col0, tokens, counters, mask_id, temperature, seed, state, best_id) -> None:
    """Torch version of the C++ ``linear_stats_chunk_cpu_``: fold ``z [N, C]`` (columns
    ``[col0, col0 + C)``) into ``state`` / ``best_id`` in place."""
    N, C = z.shape
    ninf = float("-inf")
    rows = torch.arange(N, device=z.device)
    if col0 <= mask_id < col0 + C:
        zm = z[:, mask_id - col0]
        state[:, _S_ZM] = zm.double()
        if temperature > 0:
            g = gumbel_noise(seed, counters, 1, col_start=mask_id)[:, 0]
            state[:, _S_SM] = (zm / temperature + g).double()
        else:
            state[:, _S_SM] = zm.double()
    in_chunk = (tokens >= col0) & (tokens < col0 + C)
    zc = z[rows, (tokens - col0).clamp(0, C - 1)]
    state[:, _S_ZC] = torch.where(in_chunk, zc.double(), state[:, _S_ZC])
    nan = torch.isnan(z).any(1)
    mc = torch.where(nan, ninf, z.max(1).values).double()  # [N]
    finite = ~nan & (mc > ninf)
    mc_safe = torch.where(finite, mc, 0.0)
    sc = torch.exp(z.double() - mc_safe[:, None]).sum(1)  # [N]
    m_old = state[:, _S_M]
    m_new = torch.maximum(m_old, mc)
    merged = state[:, _S_S] * torch.exp(m_old - m_new) + sc * torch.exp(mc - m_new)
    state[:, _S_S] = torch.where(finite, merged, state[:, _S_S])
    state[:, _S_M] = torch.where(finite, m_new, m_old)
    state[:, _S_S] = torch.where(nan, float("nan"), state[:, _S_S])
    score = z / temperature + gumbel_noise(seed, counters, C, col_start=col0) if temperature > 0 else z
    if col0 <= mask_id < col0 + C:
        score = score.clone()
        score[:, mask_id - col0] = ninf
    bi = score.argmax(1)  # first maximum (lowest id) on ties
    bv = score.gather(1, bi[:, None])[:, 0]
    bz = z[rows, bi]
    up = finite & (bv.double() > state[:, _S_BV])
    state[:, _S_BV] = torch.where(up, bv.double(), state[:, _S_BV])
    state[:, _S_BZ] = torch.where(up, bz.double(), state[:, _S_BZ])
    best_id.copy_(torch.where(up, bi + col0, best_id))


def _finish_cpu(state, best_id, tokens, V, mask_id):
    """Probabilities, the full-vocabulary candidate and status from the merged state."""
    m, s, bv, bz, zm, sm, zc = (state[:, k] for k in range(7))
    x = tokens
    status = torch.zeros(x.shape[0], dtype=torch.int32, device=x.device)
    status |= torch.isnan(s).to(torch.int32) * STATUS_NAN
    status |= (m == float("-inf")).to(torch.int32) * STATUS_ALL_NEG_INF
    status |= (~((x >= 0) & (x < V))).to(torch.int32) * STATUS_TOKEN_RANGE
    # no finite non-mask column: the best id is column 0 (torch.argmax of -inf), maybe the mask itself
    bz = torch.where((bv == float("-inf")) & (best_id == mask_id), zm, bz)
    mask_wins = (sm > bv) | ((sm == bv) & (mask_id < best_id))
    top_id = torch.where(mask_wins, mask_id, best_id)
    z_top = torch.where(mask_wins, zm, bz)
    m_safe = torch.where(torch.isfinite(m), m, 0.0)

    def prob(zv):
        return (torch.exp(zv - m_safe) / s).float()

    bad = status != 0
    nan = float("nan")
    return (top_id.masked_fill(bad, -1), prob(z_top).masked_fill(bad, nan), prob(zm).masked_fill(bad, nan),
            prob(zc).masked_fill(bad, nan), best_id.masked_fill(bad, -1), prob(bz).masked_fill(bad, nan), status)


def _default_chunk(N: int, V: int) -> int:
    """Vocabulary columns per chunk: about 2**23 float32 logits (32 MiB) and at least 4096 columns.
    Narrower chunks make each matmul slower (measured with N = 1024, D = 512 on 2 cores: 2048 columns
    1.35x the time of 8192; benchmarks/bench_linear_stats.py)."""
    return max(64, min(V, max(4096, (2**23 // max(N, 1)) // 64 * 64)))


def _linear_stats_chunked(hidden, weight, bias, suppress_idx, tokens, counters, V, mask_id, logit_scale,
                          temperature, seed, use_ext: bool, chunk_size: int | None):
    N = hidden.shape[0]
    device = hidden.device
    state, best_id = _cpu_state(N, device)
    if N > 0:
        h = hidden.float()
        C = chunk_size or _default_chunk(N, V)
        buf = torch.empty((N, min(C, V)), dtype=torch.float32, device=device)
        key = seed_key(seed)
        for c0 in range(0, V, C):
            c1 = min(c0 + C, V)
            z = buf[:, : c1 - c0]
            w = weight[c0:c1].float()
            if bias is not None:
                torch.addmm(bias[c0:c1].float(), h, w.t(), out=z)
            else:
                torch.mm(h, w.t(), out=z)
            if logit_scale != 1.0:
                z.mul_(logit_scale)
            if suppress_idx is not None:
                local = suppress_idx[(suppress_idx >= c0) & (suppress_idx < c1)] - c0
                if local.numel():
                    z.index_fill_(1, local, float("-inf"))
            if use_ext:
                torch.ops.rmkernels.linear_stats_chunk_cpu_(z, c0, tokens, counters, mask_id, temperature, key,
                                                             state, best_id)
            else:
                _fold_chunk_torch(z, c0, tokens, counters, mask_id, temperature, seed, state, best_id)
    return _finish_cpu(state, best_id, tokens, V, mask_id)


# ----------------------------------------------------------------------------------------------
# Public op
# ----------------------------------------------------------------------------------------------
def _resolve(impl: str, device: torch.device) -> str:
    """``impl`` by the implementation table (``rmkernels._utils.IMPL_TABLE``), with two refinements:
    a build of ``rmkernels._C`` older than this op lacks the C++ chunk pass, and where ``"auto"``
    finds no kernel it folds the chunks with torch code ("torch") rather than materialising the
    logits as the reference does."""
    resolved = _utils.resolve_impl("rm_linear_stats", impl, device)
    if resolved == "ext" and not _chunk_op_available():
        if impl == "auto":
            return "torch"
        raise ValueError("impl='ext': this build of rmkernels._C predates rm_linear_stats' C++ pass; rebuild it "
                         "with `python3 setup.py build_ext --inplace` or use impl='auto'")
    if resolved == "reference" and impl == "auto":
        return "torch"
    return resolved


def _raise_on_status(status: torch.Tensor) -> None:
    """One host synchronisation: raise ValueError naming the argument if any row was flagged."""
    bits = (STATUS_TOKEN_RANGE, STATUS_NAN, STATUS_ALL_NEG_INF)
    bit_t = torch.tensor(bits, dtype=status.dtype, device=status.device)
    present = ((status[:, None] & bit_t) != 0).any(0).tolist()
    if not any(present):
        return
    rows = lambda bit: torch.nonzero(status & bit).flatten()[:5].tolist()  # noqa: E731
    if present[0]:
        raise ValueError(f"tokens holds ids outside [0, vocab_size) (first bad flattened rows: {rows(STATUS_TOKEN_RANGE)})")
    if present[1]:
        raise ValueError("the logits hidden @ lm_weight.T contain NaN (check hidden / lm_weight / lm_bias; "
                         f"first bad flattened rows: {rows(STATUS_NAN)})")
    raise ValueError("the logits hidden @ lm_weight.T have rows that are entirely -inf (first bad flattened rows: "
                     f"{rows(STATUS_ALL_NEG_INF)})")


def _suppress_index(suppress_tokens, V: int, device, check: bool) -> torch.Tensor | None:
    """``suppress_tokens`` (ints or an integer tensor) as an int64 device tensor, or None when empty."""
    if isinstance(suppress_tokens, torch.Tensor):
        check_tensor("suppress_tokens", suppress_tokens, dtypes=INT_DTYPES)
        check_same_device(suppress_tokens=suppress_tokens, hidden=torch.empty(0, device=device))
        idx = suppress_tokens.reshape(-1).to(torch.int64)
        if idx.numel() == 0:
            return None
        if check and not bool(((idx >= 0) & (idx < V)).all()):
            raise ValueError(f"suppress_tokens holds ids outside [0, vocab_size={V})")
        return idx
    try:
        ids = [int(t) for t in suppress_tokens]
    except (TypeError, ValueError):
        raise ValueError(f"suppress_tokens must be a sequence of ints or an integer tensor, got {suppress_tokens!r}") from None
    if not ids:
        return None
    for t in ids:
        check_index("suppress_tokens", t, V, "vocab_size")
    return torch.tensor(ids, dtype=torch.int64, device=device)


def rm_linear_stats(
    hidden: torch.Tensor,
    lm_weight: torch.Tensor,
    tokens: torch.Tensor,
    mask_id: int,
    *,
    lm_bias: torch.Tensor | None = None,
    vocab_size: int | None = None,
    temperature: float = 0.0,
    seed: int | None = None,
    offset: int | torch.Tensor = 0,
    suppress_tokens=(),
    logit_scale: float = 1.0,
    allow_tf32: bool = False,
    check: bool = True,
    impl: str = "auto",
    chunk_size: int | None = None,
    split: int | None = None,
    blocks: tuple[int, int, int] | None = None,
) -> RMStats:
    """Reflective Masking statistics of an LM head's logits without writing them (docs/spec.md §9).

    Equals :func:`rmkernels.rm_stats` on ``z = (hidden @ lm_weight[:vocab_size].T +
    lm_bias[:vocab_size]) * logit_scale`` with the ``suppress_tokens`` columns at ``-inf``, where
    ``z`` is accumulated in float32 from the stored inputs (never rounded to their dtype): the same
    tie rules (lowest id), status flags and counter-based Gumbel noise, so sampled ids equal
    ``rm_stats``'s on the same logits.

    Parameters
    ----------
    hidden : Tensor ``[..., D]``
        The LM head's input (final hidden states), float32 / float16 / bfloat16; may be strided.
    lm_weight : Tensor ``[V', D]``
        The LM head (output embedding) weight, same dtype as ``hidden``; may be strided.
    tokens : Tensor ``[...]``
        Current token ids, integer, shape ``hidden.shape[:-1]``.
    mask_id : int
        The mask token id, in ``[0, vocab_size)``.
    lm_bias : Tensor ``[V']``, optional
        The head's bias (any float dtype).
    vocab_size : int, optional
        Real vocabulary size ``V <= V'``: rows ``V, ..., V' - 1`` of the head are padding and ignored
        (default ``V'``).
    temperature, seed, offset
        As in :func:`rmkernels.rm_stats`: ``temperature > 0`` draws Gumbel-max candidates on
        ``z / temperature`` from the counter RNG keyed by ``(seed, offset + row or offset[row], column)``.
    suppress_tokens : sequence of int or integer Tensor
        Columns whose logits are ``-inf`` (never proposed; their probability is 0).
    logit_scale : float
        Multiplies the logits (after the bias).
    allow_tf32 : bool
        Let float32 inputs use TF32 tensor cores on the GPU (IEEE float32 otherwise).
    check : bool
        Validate token range / NaN / all ``-inf`` rows with one host synchronisation and raise
        ``ValueError``; with ``False`` (decoding loops, CUDA graphs) bad rows get ids ``-1`` and
        NaN probabilities.
    impl : {"auto", "triton", "ext", "reference"}
        ``"triton"``: the fused kernel (CUDA, or the interpreter when ``TRITON_INTERPRET=1``).
        ``"ext"``: CPU vocabulary chunks folded by the C++ statistics pass of ``rmkernels._C``.
        ``"reference"``: materialises the float32 logits and runs the eager reference.
        ``"auto"``: Triton on CUDA (and in the interpreter); on CPU the chunked path, with the
        C++ pass when the extension is built, else the same chunks folded by torch code.
    chunk_size : int, optional
        CPU path: vocabulary columns per chunk (default: about 2**23 logits per chunk, >= 4096 columns).
    split, blocks : optional
        Triton tuning overrides: vocabulary slices, and ``(BLOCK_N, BLOCK_V, BLOCK_K)``.

    Returns
    -------
    RMStats
        ``top_id, top_p, mask_p, cur_p, best_id, best_p`` shaped like ``tokens``.

    Example
    -------
    >>> h, W = torch.randn(5, 64), torch.randn(1000, 64)
    >>> x = torch.randint(0, 1000, (5,))
    >>> st = rm_linear_stats(h, W, x, mask_id=999)
    >>> bool((st.top_id == (h @ W.T).argmax(-1)).all())
    True
    """
    check_tensor("hidden", hidden, dtypes=FLOAT_DTYPES, min_ndim=1)
    check_tensor("lm_weight", lm_weight, dtypes=FLOAT_DTYPES, ndim=2)
    check_tensor("tokens", tokens, dtypes=INT_DTYPES)
    if lm_bias is not None:
        check_tensor("lm_bias", lm_bias, dtypes=FLOAT_DTYPES, ndim=1)
    check_same_device(hidden=hidden, lm_weight=lm_weight, tokens=tokens, lm_bias=lm_bias)
    D = hidden.shape[-1]
    Vp = lm_weight.shape[0]
    if lm_weight.shape[1] != D:
        raise ValueError(f"lm_weight shape {tuple(lm_weight.shape)} must be [V', D] with D = hidden.shape[-1] = {D}")
    if Vp == 0:
        raise ValueError("lm_weight has an empty vocabulary dimension (V' == 0)")
    if lm_bias is not None and lm_bias.shape[0] != Vp:
        raise ValueError(f"lm_bias shape {tuple(lm_bias.shape)} must be [V'] = ({Vp},)")
    if tuple(tokens.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"tokens shape {tuple(tokens.shape)} must equal hidden.shape[:-1] = {tuple(hidden.shape[:-1])}")
    if vocab_size is None:
        V = Vp
    else:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 1 <= vocab_size <= Vp:
            raise ValueError(f"vocab_size must be an int in [1, lm_weight.shape[0]={Vp}], got {vocab_size!r}")
        V = vocab_size
    mask_id = check_index("mask_id", mask_id, V, "vocab_size")
    temperature = float(temperature)
    if not temperature >= 0 or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    logit_scale = float(logit_scale)
    if logit_scale != logit_scale or abs(logit_scale) == float("inf"):
        raise ValueError(f"logit_scale must be a finite number, got {logit_scale}")
    if isinstance(offset, torch.Tensor):
        check_tensor("offset", offset, dtypes=INT_DTYPES)
        check_same_device(hidden=hidden, offset=offset)
        if tuple(offset.shape) != tuple(tokens.shape):
            raise ValueError(f"offset tensor shape {tuple(offset.shape)} must equal tokens shape {tuple(tokens.shape)}")
    elif isinstance(offset, bool) or not isinstance(offset, int):
        raise ValueError(f"offset must be an int or an integer tensor, got {type(offset).__name__}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item()) if temperature > 0 else 0
    device = hidden.device
    if torch.is_autocast_enabled(device.type):  # as F.linear would: compute in the autocast dtype
        dt = torch.get_autocast_dtype(device.type)
        hidden, lm_weight = hidden.to(dt), lm_weight.to(dt)
    elif lm_weight.dtype != hidden.dtype:
        raise ValueError(f"lm_weight dtype {lm_weight.dtype} must equal hidden dtype {hidden.dtype} (or run under autocast)")
    impl = _resolve(impl, device)
    sup = _suppress_index(suppress_tokens, V, device, check)

    shape = tokens.shape
    if impl == "reference":
        out = rm_linear_stats_reference(
            hidden, lm_weight, tokens, mask_id, lm_bias, V, temperature, seed, offset,
            () if sup is None else sup, logit_scale,
        )
    else:
        h = hidden.reshape(-1, D)
        N = h.shape[0]
        x = tokens.reshape(-1).to(torch.int64).contiguous()
        counters = row_counters(N, offset, device).contiguous()
        if impl == "triton":
            if h.stride(-1) != 1:
                h = h.contiguous()
            w = lm_weight if lm_weight.stride(-1) == 1 else lm_weight.contiguous()
            b = None if lm_bias is None else lm_bias[:V].contiguous()
            sup_mask = None
            if sup is not None:  # ids outside [0, V) (check=False) land in a spare slot
                slot = torch.where((sup >= 0) & (sup < V), sup, V)
                sup_mask = torch.zeros(V + 1, dtype=torch.int8, device=device).index_fill_(0, slot, 1)[:V]
            bn, bv, bk = blocks or (0, 0, 0)
            out = torch.ops.rmkernels.linear_stats_triton(
                h, w, b, sup_mask, x, counters, V, mask_id, logit_scale, temperature, seed_key(seed),
                bool(allow_tf32), split or 0, bn, bv, bk,
            )
        else:
            if sup is not None:
                sup = sup[(sup >= 0) & (sup < V)]
            out = _linear_stats_chunked(h, lm_weight, lm_bias, sup, x, counters, V, mask_id, logit_scale,
                                        temperature, seed, impl == "ext", chunk_size)
    *stats, status = out
    if check:
        _raise_on_status(status)
    return RMStats(*(t.reshape(shape) for t in stats))
