"""The fast decoder: the reference's semantics with every piece of state on the device.

One :meth:`FastDecoder.step` updates all rows at once with tensor operations only: no ``.item()``,
``.tolist()`` or ``nonzero()``; statistics come from the fused ``rm_stats`` kernel (with
``fused_head``: ``rm_linear_stats`` on the hidden states, no logits written), the HER embeddings
from ``history_embed``, and the reveal / re-mask decision from
:func:`~rmkernels.decode.sampler.decide_step` (shared with :class:`~rmkernels.decode.RMSampler`).
All state lives in tensors updated in place, so on a GPU a step can be captured in a CUDA graph.
Rows progress independently (own block, step count, fixed point); with a KV cache (docs/spec.md §8,
:mod:`rmkernels.decode.cache`) they go through the blocks in lockstep, a row at its fixed point
waiting unchanged until the block ends for all.
"""
from __future__ import annotations

import torch

from rmkernels.decode.cache import CachedForward, plan_cache, refresh_due, scatter_stats
from rmkernels.decode.canvas import Canvas
from rmkernels.decode.config import COUNTER_STRIDE, DecodeConfig
from rmkernels.decode.forward import decoder_logits, decoder_stats
from rmkernels.decode.model import RMModel
from rmkernels.decode.sampler import decide_step
from rmkernels.decode.schedule import reveal_count
from rmkernels.history import HistoryBuffer


class FastDecoder:
    def __init__(self, rm: RMModel, canvas: Canvas, cfg: DecodeConfig, mask_id: int, seed: int, kernels: str = "auto"):
        self.rm, self.canvas, self.cfg, self.mask_id, self.seed, self.kernels = rm, canvas, cfg, mask_id, seed, kernels
        x = canvas.tokens
        B, L = x.shape
        dev = x.device
        self.x = x.clone()  # [B, L] the canvas
        self.remask_count = torch.zeros(B, L, dtype=torch.int64, device=dev)
        self.block = torch.zeros(B, dtype=torch.int64, device=dev)  # current block per row
        self.step_in_block = torch.zeros(B, dtype=torch.int64, device=dev)
        self.rescues = torch.zeros(B, dtype=torch.int64, device=dev)  # stuck rescues in the current block
        self.steps = torch.zeros(B, dtype=torch.int64, device=dev)  # steps taken per row
        self.finished = canvas.n_blocks == 0  # [B] bool
        self.bad_logits = torch.zeros((), dtype=torch.bool, device=dev)  # NaN / all -inf seen
        self.positions = torch.arange(L, device=dev)
        self.history = (
            HistoryBuffer(B, L, cfg.history_steps, device=dev, fill=mask_id) if cfg.history_steps > 0 else None
        )
        self.suppress_idx = torch.tensor(cfg.suppress_tokens, dtype=torch.int64, device=dev)
        # compared in float32, as the reference; made here, not in a step (CUDA-graph capture)
        self.rescue_ratio = torch.tensor(cfg.rescue_ratio or 0.0, dtype=torch.float32, device=dev)
        # two-phase editing (docs/spec.md §10): rows in phase 1, their phase-1 steps; the schedule's n and T
        self.two_phase = cfg.phase1_threshold is not None
        self.phase1 = ~self.finished & self.two_phase  # [B] bool
        self.phase1_done = torch.zeros(B, dtype=torch.int64, device=dev)
        self.phase1_threshold = torch.tensor(cfg.phase1_threshold or 0.0, dtype=torch.float32, device=dev)
        self.sched_n = torch.zeros(B, dtype=torch.int64, device=dev)
        self.sched_T = (torch.full((B,), cfg.schedule_steps, dtype=torch.int64, device=dev)
                        if cfg.schedule_steps is not None else canvas.steps_per_block.clone())
        # KV cache (docs/spec.md §8): lockstep blocks; `waiting` = done with the current block, others are not
        self.plan = plan_cache(rm, canvas, cfg)
        self.cached = None if self.plan is None else CachedForward(rm, canvas, cfg, self.plan, mask_id, kernels,
                                                                   self.suppress_idx)
        self.waiting = torch.zeros(B, dtype=torch.bool, device=dev)
        self._graphs: dict = {}
        self._pool = None

    # ------------------------------------------------------------------------------------------
    def logits(self) -> torch.Tensor:  # [B, L, V]
        hist = None if self.history is None else (self.history.ids, self.history.lengths)
        c = self.canvas
        return decoder_logits(self.rm, self.x, c.attention_mask, c.gen_mask, hist, self.cfg, self.mask_id,
                              self.kernels, self.suppress_idx)

    def editable(self, active: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` the positions a step may edit: generated, up to the end of the row's block (and
        from its start with ``remask_scope="block"``), in active rows."""
        c = self.canvas
        G = c.gen_mask & (c.gen_rank < ((self.block + 1) * c.block_len)[:, None]) & active[:, None]
        if self.cfg.edit_scope == "block":
            G &= c.gen_rank >= (self.block * c.block_len)[:, None]
        return G

    def statistics(self, refresh: bool = False):
        """Statistics of the current canvas ``[B, L]``: from a full forward, or with a cache from the
        span's (other positions invalid). ``refresh``: the cached step is a full forward."""
        cfg, c, x = self.cfg, self.canvas, self.x
        hist = None if self.history is None else (self.history.ids, self.history.lengths)
        if self.cached is None:
            counters = self.steps[:, None] * COUNTER_STRIDE + self.positions[None, :]  # [B, L] RNG counters
            return decoder_stats(self.rm, x, c.attention_mask, c.gen_mask, hist, cfg, self.mask_id, self.kernels,
                                 self.suppress_idx, temperature=cfg.temperature, seed=self.seed, offset=counters)
        st, pos = self.cached.stats(x, hist, refresh, self.steps, self.seed)  # [B, W] at positions pos [B, W]
        return scatter_stats(st, pos, x.shape[1])

    def step(self, refresh: bool = False) -> None:
        """One Reflective Masking step for every active row, in place (``refresh``: with a KV cache,
        this step's forward is a full one that refills the cache)."""
        cfg, c, M, x = self.cfg, self.canvas, self.mask_id, self.x
        active = ~self.finished & ~self.waiting  # [B]
        p1 = active & self.phase1  # [B] rows in phase 1 of two-phase editing (docs/spec.md §10)
        p2 = active & ~self.phase1  # [B] rows in the RM loop
        G = self.editable(p2)  # [B, L] editable now
        st = self.statistics(refresh)
        masked = x == M

        # 0. phase 1: re-mask visible generated tokens with p(mask) > threshold and p(mask) > p(token)
        remask1 = None
        if self.two_phase:
            E1 = c.gen_mask & p1[:, None]  # [B, L] phase 1 acts on every generated position
            valid = st.top_id >= 0
            self.bad_logits |= (E1 & ~valid).any()
            remask1 = E1 & ~masked & valid & (st.mask_p > self.phase1_threshold) & (st.mask_p > st.cur_p)
            if cfg.max_remask >= 0:
                remask1 &= self.remask_count < cfg.max_remask

        # 1. reveal (a schedule: per-row k, the masked positions above its target), 2. re-mask,
        # 2b. stuck rescue (sampler.decide_step)
        k = None
        if cfg.schedule is not None:
            masked_now = (G & masked).sum(1)  # [B]
            # in place: a CUDA-graph replay reads and writes the tensors captured, never new ones
            self.sched_n.copy_(torch.where(self.step_in_block == 0, masked_now, self.sched_n))
            k = reveal_count(masked_now, self.sched_n, self.step_in_block, self.sched_T, cfg.schedule)
        d = decide_step(cfg, st, x, G, M, remask_count=self.remask_count, steps=self.steps, rescues=self.rescues,
                        rescue_ratio=self.rescue_ratio, k=k)
        self.bad_logits |= d.bad
        self.rescues += d.rescued
        remask = d.remask if remask1 is None else d.remask | remask1

        # 3. apply together; 4. fixed point / budget -> next block or finish
        changed = (d.reveal | remask).any(1)  # [B]
        if self.history is not None:
            self.history.push(x, changed)  # the state before the change
        x.copy_(torch.where(remask, M, torch.where(d.reveal, d.cand, x)))
        self.remask_count += remask
        self.steps += active
        self.step_in_block += p2
        block_done = p2 & (~changed | (self.step_in_block >= c.steps_per_block))
        if self.cached is not None:  # lockstep: wait for the other rows (next_block moves everyone on)
            self.waiting |= block_done
            return
        self.block += block_done
        self.step_in_block.masked_fill_(block_done, 0)
        self.rescues.masked_fill_(block_done, 0)
        self.finished |= self.block >= c.n_blocks
        if self.two_phase:  # phase 1 ends at its fixed point or after phase1_steps steps
            self.phase1_done += p1
            self.phase1 &= ~(p1 & (~changed | (self.phase1_done >= cfg.phase1_steps)))

    def next_block(self) -> None:
        """Lockstep blocks (KV cache): every unfinished row moves to its next block."""
        moving = ~self.finished
        self.block += moving
        self.waiting.zero_()
        self.step_in_block.zero_()
        self.rescues.zero_()
        self.finished |= self.block >= self.canvas.n_blocks

    # ------------------------------------------------------------------------------------------
    def _state(self):
        hist = [] if self.history is None else [self.history.ids, self.history.lengths]
        return [self.x, self.remask_count, self.block, self.step_in_block, self.rescues, self.steps, self.finished,
                self.bad_logits, self.waiting, self.phase1, self.phase1_done, self.sched_n, *hist]

    def _graphed_step(self, refresh: bool = False):
        """Capture :meth:`step` in a CUDA graph (state restored after the warm-up) and return its replay.

        With a KV cache the warm-up also writes the cache: a refresh writes what the real step will
        write from the same canvas, and a span step only its span, which every step recomputes before
        reading it. Graphs share one memory pool (they are replayed one at a time).
        """
        saved = [t.clone() for t in self._state()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.step(refresh)  # warm-up: allocations, autotuning, lazy initialisation
        torch.cuda.current_stream().wait_stream(side)
        for t, s in zip(self._state(), saved):
            t.copy_(s)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self.step(refresh)
        for t, s in zip(self._state(), saved):  # capture records without running, but be safe
            t.copy_(s)
        self._graphs[(refresh, None if self.cached is None else self.cached.width())] = graph
        return graph.replay

    def stepper(self, refresh: bool = False):
        """The callable that runs one step: :meth:`step`, or its CUDA-graph replay (``cuda_graph``),
        captured once per kind (refresh or span) and span width."""
        if not (self.cfg.cuda_graph and self.x.is_cuda):
            return lambda: self.step(refresh)
        key = (refresh, None if self.cached is None else self.cached.width())
        graph = self._graphs.get(key)
        return graph.replay if graph is not None else self._graphed_step(refresh)

    def run(self, trajectory: list | None = None) -> int:
        """Step until every row has finished; returns the number of model calls.

        The device-side flags (all rows finished, bad logits seen) are read every
        ``cfg.check_every`` steps: one host synchronisation each time, none inside a step.
        """
        if bool(self.finished.all()):
            return 0
        if self.cached is not None:
            return self._run_cached(trajectory)
        step = self.stepper()
        calls = 0
        n_max = self.cfg.max_steps  # no row takes more than `steps` steps (+ phase 1)
        for it in range(n_max):
            step()
            calls += 1
            if trajectory is not None:
                trajectory.append(self.x.clone())
            if (it + 1) % self.cfg.check_every == 0 or it + 1 == n_max:
                done, bad = torch.stack([self.finished.all(), self.bad_logits]).tolist()
                if bad:
                    raise ValueError(f"the model produced NaN or all -inf logits (by step {it + 1})")
                if done:
                    break
        return calls

    def _run_cached(self, trajectory: list | None) -> int:
        """The lockstep block loop of a cached decode (docs/spec.md §8); host decisions only between steps."""
        cfg, plan = self.cfg, self.plan
        B = self.x.shape[0]
        rows = torch.arange(B, device=self.x.device)
        traj = None
        if trajectory is not None:  # indexed by each row's own step count, as the reference records it
            traj = self.x[None].repeat(cfg.steps + 1, 1, 1)
        calls = 0
        for block in range(plan.n_blocks):
            self.cached.set_block(block)
            for j in range(plan.steps_per_block):
                self.stepper(refresh_due(j, cfg))()
                calls += 1
                if traj is not None:
                    traj.index_put_((self.steps, rows), self.x)
                if (j + 1) % cfg.check_every == 0 or j + 1 == plan.steps_per_block:
                    done, bad = torch.stack([(self.finished | self.waiting).all(), self.bad_logits]).tolist()
                    if bad:
                        raise ValueError(f"the model produced NaN or all -inf logits (block {block}, step {j + 1})")
                    if done:
                        break
            self.next_block()
        if traj is not None:  # after a row's last step: its final canvas
            after = torch.arange(cfg.steps + 1, device=self.x.device)[:, None] > self.steps[None, :]
            traj = torch.where(after[..., None], self.x[None], traj)
            trajectory[:] = list(traj)
        return calls
