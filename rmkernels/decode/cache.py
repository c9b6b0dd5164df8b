"""The KV cache in the decoder (docs/spec.md §8): which positions a step forwards, and the cached forward.

Schedule (``DecodeConfig.cache``; rows go through the blocks in lockstep)

* At step ``j`` of a block with ``j == 0`` or ``j % cache_refresh == 0`` (a *refresh*), one full
  forward of the canvas stores every layer's keys and values of every position in the cache.
* Other steps forward only the *span* of each row: ``"dual"``: the active block (generated
  positions ``[k * block, (k + 1) * block)``); ``"prefix"``: the active block and every generated
  position after it. Attention at every layer uses the cached keys/values outside the span and
  fresh ones inside. The span's fresh keys/values are written into the cache (harmless: a span is
  recomputed at every step until the next refresh, so its cached entries are never read).
* Every step, refresh or not, produces logits for the span only, and only the active block is
  edited (``remask_scope="block"``).
* Rows with prompts of different lengths have their spans at different positions: the fast path
  forwards per-row positions (``q_index``, a gather / scatter of the same width for every row), so
  every row keeps the positions, keys and padding it has when decoded alone (batch invariance).
* A model whose logits for position ``i`` are its output at ``i - 1`` (``logits_shift = 1``,
  Dream) forwards one more position per row, ``span_start - 1`` (position 0 keeps its own output:
  the row's first forwarded slot repeats position 0).
* History Reference embeddings are computed for the forwarded positions (all of them at a refresh).
* Guidance (``cfg_scale``) doubles the batch, cache included.

:class:`CachedForward` is the fast path's (device tensors, static shapes per span width, CUDA-graph
capturable); :class:`RowCacheReference` is the same schedule for one row, written plainly with the
model's contiguous ``q_span`` (the oracle of the reference loop).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rmkernels.decode.canvas import Canvas
from rmkernels.decode.config import COUNTER_STRIDE, DecodeConfig
from rmkernels.decode.forward import guide, guidance_batch, guide_and_suppress
from rmkernels.decode.model import RMModel
from rmkernels.ops.rm_stats import RMStats, rm_stats
from rmkernels.reference.linear_stats import linear_logits_reference


def refresh_due(step_in_block: int, cfg: DecodeConfig) -> bool:
    """True when step ``step_in_block`` of a block is a full forward that refreshes the cache."""
    return step_in_block == 0 or (cfg.cache_refresh is not None and step_in_block % cfg.cache_refresh == 0)


@dataclass
class CachePlan:
    """The block layout a cached decode runs on (every row alike, so the blocks can run in lockstep).

    starts : ``[B]`` int64, each row's first generated position.
    n_gen : generated positions per row (contiguous).
    block_len, n_blocks, steps_per_block : the block schedule (the same for every row).
    shift : the model's ``logits_shift`` (0 or 1).
    mode : ``"prefix"`` or ``"dual"``.
    """

    starts: torch.Tensor
    n_gen: int
    block_len: int
    n_blocks: int
    steps_per_block: int
    shift: int
    mode: str

    def width(self, block: int) -> int:
        """Positions whose logits a step of ``block`` needs (the span, before the shift's extra one)."""
        if self.mode == "dual":
            return self.block_len
        return self.n_gen - block * self.block_len


def plan_cache(rm: RMModel, canvas: Canvas, cfg: DecodeConfig) -> CachePlan | None:
    """Check that ``cfg.cache`` can run on this model and canvas (host syncs allowed: once per call).

    Returns ``None`` for ``cache="none"``. Raises ``ValueError`` naming ``cache`` when the model lacks
    the KV-cache API, or when the rows' generated positions are not one contiguous run of the same
    length in every row (prompts extended by ``gen_length`` always are).
    """
    if cfg.cache == "none":
        return None
    if not rm.supports_cache:
        raise ValueError(f"cache={cfg.cache!r} needs a model with the KV-cache API (forward with kv_cache / "
                         f"q_index / return_hidden, logits_from_hidden, allocate_kv_cache: e.g. "
                         f"rmkernels.models.LLaDAModel / DreamModel); got {type(rm.model).__name__}. "
                         "Use cache='none'")
    gen = canvas.gen_mask
    B, L = gen.shape
    n = gen.sum(1)
    n_gen = int(n.max()) if B else 0
    if B and bool((n != n_gen).any()):
        raise ValueError(f"cache={cfg.cache!r} needs the same number of generated positions in every row "
                         f"(got {sorted(set(n.tolist()))}); use gen_length, or cache='none'")
    pos = torch.arange(L, device=gen.device)
    starts = torch.where(gen, pos, L).min(1).values if B else torch.zeros(0, dtype=torch.int64, device=gen.device)
    run = (pos >= starts[:, None]) & (pos < starts[:, None] + n_gen)
    if not torch.equal(run, gen):
        raise ValueError(f"cache={cfg.cache!r} needs every row's generated positions to be one contiguous run "
                         "(prompt, then the generation); use gen_length, or cache='none'")
    n_blocks = int(canvas.n_blocks.max()) if B else 0
    spb = int(canvas.steps_per_block.max()) if B else 0
    return CachePlan(starts, n_gen, canvas.block_len, n_blocks, spb, rm.logits_shift, cfg.cache)


def scatter_stats(st: RMStats, pos: torch.Tensor, length: int) -> RMStats:
    """Statistics of the positions ``pos [B, W]`` placed in ``[B, length]`` tensors; every other
    position gets id ``-1`` (invalid: never revealed or re-masked) and probability 0."""
    B = pos.shape[0]

    def put(v, fill):
        return torch.full((B, length), fill, dtype=v.dtype, device=v.device).scatter_(1, pos, v)

    return RMStats(put(st.top_id, -1), put(st.top_p, 0.0), put(st.mask_p, 0.0), put(st.cur_p, 0.0),
                   put(st.best_id, -1), put(st.best_p, 0.0))


# ---------------------------------------------------------------------------------------------
class CachedForward:
    """The fast path's cached forward: a static KV cache and per-row span indices on the device.

    ``set_block(k)`` (host, between blocks) writes the rows' span positions for block ``k`` into
    buffers that keep their storage (one per span width), so a step captured in a CUDA graph reads
    the new positions. ``logits(x, history, refresh)`` returns the guided, suppressed logits of the
    span ``[B, W, V]`` and its positions ``[B, W]``.
    """

    def __init__(self, rm: RMModel, canvas: Canvas, cfg: DecodeConfig, plan: CachePlan, mask_id: int,
                 kernels: str, suppress_idx: torch.Tensor | None):
        self.rm, self.canvas, self.cfg, self.plan, self.mask_id = rm, canvas, cfg, plan, mask_id
        self.kernels, self.suppress_idx = kernels, suppress_idx
        B, L = canvas.tokens.shape
        self.B, self.L = B, L
        self.n_in = 2 * B if cfg.cfg_scale > 0 else B  # guidance doubles the batch (and the cache)
        self.cache = rm.allocate_cache(self.n_in, L)
        self._pos: dict[int, torch.Tensor] = {}  # width -> [B, W] positions whose logits a step needs
        self._fwd: dict[int, torch.Tensor] = {}  # width -> [n_in, W + shift] positions forwarded
        self.block = 0

    def width(self) -> int:
        return self.plan.width(self.block)

    def set_block(self, block: int) -> None:
        """Point the span buffers at block ``block`` (in place)."""
        p, dev = self.plan, self.canvas.tokens.device
        self.block = block
        W = p.width(block)
        start = p.starts + block * p.block_len  # [B]
        pos = start[:, None] + torch.arange(W, device=dev)
        fwd = (start[:, None] - p.shift + torch.arange(W + p.shift, device=dev)).clamp(min=0)
        if self.n_in != self.B:
            fwd = torch.cat([fwd, fwd])
        if W in self._pos:
            self._pos[W].copy_(pos)
            self._fwd[W].copy_(fwd)
        else:
            self._pos[W], self._fwd[W] = pos, fwd

    def logits(self, x: torch.Tensor, history, refresh: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[B, W, V]`` of the current span and its positions ``[B, W]``.

        ``refresh``: a full forward that also refills the cache (its logits at the span are exactly
        the uncached ones); otherwise only the span is forwarded, against the cache.
        """
        hidden, pos = self.hidden(x, history, refresh)
        logits = self.rm.logits_from_hidden(hidden)
        if self.mask_id >= logits.shape[-1]:
            raise ValueError(f"mask_id={self.mask_id} is outside the model's vocabulary (V={logits.shape[-1]})")
        return guide_and_suppress(logits, self.B, self.cfg, self.suppress_idx), pos

    def stats(self, x: torch.Tensor, history, refresh: bool, steps: torch.Tensor, seed: int):
        """``(RMStats [B, W], positions [B, W])`` of the span: ``rm_stats`` of :meth:`logits`, or with
        ``fused_head`` ``rm_linear_stats`` of the guided hidden states (docs/spec.md §9). RNG counters are
        ``steps * 2**24 + position``, as without a cache."""
        cfg, M = self.cfg, self.mask_id
        if not cfg.fused_head:
            logits, pos = self.logits(x, history, refresh)
            counters = steps[:, None] * COUNTER_STRIDE + pos
            return rm_stats(logits, x.gather(1, pos), M, temperature=cfg.temperature, seed=seed, offset=counters,
                            check=False, impl=self.kernels), pos
        from rmkernels.ops.linear_stats import rm_linear_stats

        hidden, pos = self.hidden(x, history, refresh)
        w, b, V = self.rm.lm_head()
        if M >= V:
            raise ValueError(f"mask_id={M} is outside the model's vocabulary (V={V})")
        counters = steps[:, None] * COUNTER_STRIDE + pos
        h = guide(hidden, self.B, cfg).to(w.dtype)
        st = rm_linear_stats(h, w, x.gather(1, pos), M, lm_bias=b, vocab_size=V, temperature=cfg.temperature,
                             seed=seed, offset=counters, suppress_tokens=self.suppress_idx, check=False,
                             impl=self.kernels)
        return st, pos

    def hidden(self, x: torch.Tensor, history, refresh: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The LM head's input ``[n_in, W, D]`` for the span's positions (the shift applied; guidance
        not yet combined) and those positions ``[B, W]``."""
        rm, cfg, c, M = self.rm, self.cfg, self.canvas, self.mask_id
        W = self.width()
        pos, fwd = self._pos[W], self._fwd[W]
        x_in, att_in, g_in, hist_in = guidance_batch(x, c.attention_mask, c.gen_mask, history, cfg, M)
        if not refresh:  # only the forwarded positions: their tokens, history and HER mask
            H = None if hist_in is None else hist_in[0].shape[1]
            x_in, g_in = x_in.gather(1, fwd), g_in.gather(1, fwd)
            if hist_in is not None:
                hist_in = (hist_in[0].gather(2, fwd[:, None, :].expand(-1, H, -1)), hist_in[1])
        if hist_in is not None:
            embeds = rm.history_norm(rm.embedding_weight, x_in, hist_in[0], hist_in[1], g_in,
                                     decay=cfg.history_decay, rotate=cfg.history_rotate, check=False,
                                     impl=self.kernels)
            inputs = {"inputs_embeds": embeds}
        else:
            inputs = {"input_ids": x_in}
        if refresh:
            hidden = rm.cached_hidden(**inputs, attention_mask=att_in, kv_cache=self.cache)  # [n_in, L, D]
            hidden = hidden.gather(1, fwd[:, :, None].expand(-1, -1, hidden.shape[-1]))
        else:
            hidden = rm.cached_hidden(**inputs, attention_mask=att_in, kv_cache=self.cache, q_index=fwd)
        # slot j of the forwarded positions predicts position pos[:, j] (shift: the output at pos - 1)
        return hidden[:, :W], pos


# ---------------------------------------------------------------------------------------------
class RowCacheReference:
    """The same cached schedule for one row (a batch of one, two with guidance), written plainly.

    Uses the model's contiguous ``q_span=(s, e)`` (the fast path uses per-row ``q_index``) and leaves
    the cache untouched between refreshes (the fast path writes the span in place): two routes to
    the same numbers.
    """

    def __init__(self, rm: RMModel, cfg: DecodeConfig, mask_id: int, first_gen: int, n_gen: int, block_len: int):
        self.rm, self.cfg, self.mask_id = rm, cfg, mask_id
        self.first_gen, self.n_gen, self.block_len = first_gen, n_gen, block_len
        self.shift = rm.logits_shift
        self.cache = None

    def span(self, block: int) -> tuple[int, int]:
        """Positions ``[s, e)`` whose logits a step of ``block`` needs."""
        s = self.first_gen + block * self.block_len
        e = s + self.block_len if self.cfg.cache == "dual" else self.first_gen + self.n_gen
        return s, e

    def logits(self, x, attention_mask, gen, history, block: int, refresh: bool, kernels: str = "reference"):
        """``(positions [W], logits [W, V])`` for row canvas ``x [L]`` at step of ``block``."""
        rm, cfg, M = self.rm, self.cfg, self.mask_id
        L = x.shape[0]
        x_in, att_in, g_in, hist_in = guidance_batch(x[None], attention_mask, gen[None], history, cfg, M)
        if hist_in is not None:  # HER embeddings of the whole row (the model slices the span out)
            embeds = rm.history_norm(rm.embedding_weight, x_in, hist_in[0], hist_in[1], g_in,
                                     decay=cfg.history_decay, rotate=cfg.history_rotate, check=False, impl=kernels)
            inputs = {"inputs_embeds": embeds}
        else:
            inputs = {"input_ids": x_in}
        s, e = self.span(block)
        fused = cfg.fused_head  # docs/spec.md §9: the float32 logits of the LM head's input, materialised here
        if refresh:  # a full forward: every position's keys and values into the cache
            if self.cache is None:
                self.cache = rm.allocate_cache(x_in.shape[0], L)
            out = rm.model(**inputs, attention_mask=att_in, kv_cache=self.cache, cache_update=True, return_hidden=fused)
            lo = 0
        else:  # the span (one more position before it for a shifted model), the rest from the cache
            lo = max(s - self.shift, 0)
            out = rm.model(**inputs, attention_mask=att_in, kv_cache=self.cache, q_span=(lo, e), return_hidden=fused)
        # the logits of position p are the model's output at p - shift (position 0 keeps its own)
        rows = [max(p - self.shift, 0) - lo for p in range(s, e)]
        if fused:
            w, bias, V = rm.lm_head()
            h = guide(out.hidden[:, rows], 1, cfg).to(w.dtype)[0]
            logits = linear_logits_reference(h, w, bias, V, cfg.suppress_tokens)
        else:
            logits = guide_and_suppress(out.logits[:, rows], 1, cfg)[0]
        return torch.arange(s, e, device=x.device), logits


__all__ = ["CachePlan", "CachedForward", "RowCacheReference", "plan_cache", "refresh_due", "scatter_stats"]
