"""The fast decoder: the reference's semantics with every piece of state on the device.

One :meth:`FastDecoder.step` updates all rows at once with tensor operations only: no ``.item()``,
``.tolist()`` or ``nonzero()``; statistics come from the fused ``rm_stats`` kernel and the HER
embeddings from ``history_embed``. All state lives in tensors updated in place, so on a GPU a step
can be captured in a CUDA graph. Rows progress independently (own block, step count, fixed point).
"""
from __future__ import annotations

import torch

from rmkernels.decode.canvas import Canvas
from rmkernels.decode.config import DecodeConfig
from rmkernels.decode.forward import decoder_logits
from rmkernels.decode.model import RMModel
from rmkernels.decode.reference import COUNTER_STRIDE
from rmkernels.decode.schedule import reveal_count
from rmkernels.history import HistoryBuffer
from rmkernels.ops.rm_stats import rm_stats


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
        self.k = min(cfg.reveal_per_step, L)
        self.suppress_idx = torch.tensor(cfg.suppress_tokens, dtype=torch.int64, device=dev)
        # compared in float32, as the reference; made here, not in a step (CUDA-graph capture)
        self.rescue_ratio = torch.tensor(cfg.rescue_ratio or 0.0, dtype=torch.float32, device=dev)
        # two-phase editing (SPEC §10): rows in phase 1, their phase-1 steps; the schedule's n and T
        self.two_phase = cfg.phase1_threshold is not None
        self.phase1 = ~self.finished & self.two_phase  # [B] bool
        self.phase1_done = torch.zeros(B, dtype=torch.int64, device=dev)
        self.phase1_threshold = torch.tensor(cfg.phase1_threshold or 0.0, dtype=torch.float32, device=dev)
        self.sched_n = torch.zeros(B, dtype=torch.int64, device=dev)
        self.sched_T = (torch.full((B,), cfg.schedule_steps, dtype=torch.int64, device=dev)
                        if cfg.schedule_steps is not None else canvas.steps_per_block.clone())

    # ------------------------------------------------------------------------------------------
    def logits(self) -> torch.Tensor:  # [B, L, V]
        hist = None if self.history is None else (self.history.ids, self.history.lengths)
        c = self.canvas
        return decoder_logits(self.rm, self.x, c.attention_mask, c.gen_mask, hist, self.cfg, self.mask_id,
                              self.kernels, self.suppress_idx)

    def _select_reveal(self, R: torch.Tensor, score: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
        """Which revealable positions ``R [B, L]`` to reveal, by ``score [B, L]`` (ties: lowest
        position); ``k [B]``: a per-row count (the schedule's) instead of the config's mode."""
        if self.cfg.reveal == "all" and k is None:
            return R
        key = torch.where(R, score, -1.0)  # probabilities are >= 0, so non-candidates sort last
        order = torch.sort(key, dim=1, descending=True, stable=True).indices  # [B, L]
        if k is not None:  # the k best candidates of each row: rank of every position in the order
            rank = torch.empty_like(order).scatter_(1, order, self.positions.expand_as(order))
            return R & (rank < k[:, None])
        if self.cfg.reveal == "topk":
            top = order[:, : self.k]
            return torch.zeros_like(R).scatter(1, top, key.gather(1, top) >= 0)
        best = torch.zeros_like(R).scatter(1, order[:, :1], key.gather(1, order[:, :1]) >= 0)
        return (R & (score >= self.cfg.reveal_threshold)) | best

    def step(self) -> None:
        """One Reflective Masking step for every unfinished row, in place."""
        cfg, c, M, x = self.cfg, self.canvas, self.mask_id, self.x
        active = ~self.finished  # [B]
        p1 = active & self.phase1  # [B] rows in phase 1 of two-phase editing
        p2 = active & ~self.phase1  # [B] rows in the RM loop
        limit = (self.block + 1) * c.block_len  # [B] end of the current block, in generated positions
        G = c.gen_mask & (c.gen_rank < limit[:, None]) & p2[:, None]  # [B, L] editable now
        counters = self.steps[:, None] * COUNTER_STRIDE + self.positions[None, :]  # [B, L] RNG counters
        st = rm_stats(self.logits(), x, M, temperature=cfg.temperature, seed=self.seed, offset=counters,
                      check=False, impl=self.kernels)
        valid = st.top_id >= 0  # rm_stats flags NaN / all -inf rows with id -1
        E1 = c.gen_mask & p1[:, None]  # [B, L] phase 1 acts on every generated position
        self.bad_logits |= ((G | E1) & ~valid).any()
        masked = x == M

        # 0. phase 1: re-mask visible tokens with p(mask) > threshold and p(mask) > p(token)
        remask1 = None
        if self.two_phase:
            remask1 = E1 & ~masked & valid & (st.mask_p > self.phase1_threshold) & (st.mask_p > st.cur_p)
            if cfg.max_remask >= 0:
                remask1 &= self.remask_count < cfg.max_remask

        # 1. reveal
        if cfg.allow_mask_candidate:
            cand, score = st.top_id, st.top_p
            R = G & masked & valid & (cand != M)
        else:
            cand, score = st.best_id, st.best_p
            R = G & masked & valid
        k = None
        if cfg.schedule is not None:  # per-row k: the masked positions above the schedule's target
            masked_now = (G & masked).sum(1)  # [B]
            self.sched_n = torch.where(self.step_in_block == 0, masked_now, self.sched_n)
            k = reveal_count(masked_now, self.sched_n, self.step_in_block, self.sched_T, cfg.schedule)
        reveal = self._select_reveal(R, score, k)

        # 2. re-mask
        rule = cfg.remask_rule
        if rule is not None:
            due = (self.steps % cfg.remask_interval == 0)[:, None]  # [B, 1]
            Q = G & ~masked & valid & due
            if cfg.max_remask >= 0:
                Q &= self.remask_count < cfg.max_remask
            doubt = st.mask_p > st.cur_p if rule == "rm" else st.cur_p < cfg.remask_threshold
            remask = Q & doubt
            if cfg.rescue_ratio is not None:  # 2b. stuck rescue, at a fixed point of the rule
                stuck = ~(reveal | remask).any(1) & (self.rescues < cfg.max_rescues)  # [B]
                rescue = Q & (st.mask_p > self.rescue_ratio * st.cur_p) & stuck[:, None]
                remask = remask | rescue
                self.rescues += rescue.any(1)
        else:
            remask = torch.zeros_like(reveal)

        if remask1 is not None:
            remask = remask | remask1

        # 3. apply together; 4. fixed point / budget -> next block or finish
        changed = (reveal | remask).any(1)  # [B]
        if self.history is not None:
            self.history.push(x, changed)  # the state before the change
        x.copy_(torch.where(remask, M, torch.where(reveal, cand, x)))
        self.remask_count += remask
        self.steps += active
        self.step_in_block += p2
        block_done = p2 & (~changed | (self.step_in_block >= c.steps_per_block))
        self.block += block_done
        self.step_in_block.masked_fill_(block_done, 0)
        self.rescues.masked_fill_(block_done, 0)
        self.finished |= self.block >= c.n_blocks
        if self.two_phase:  # phase 1 ends at its fixed point or after phase1_steps steps
            self.phase1_done += p1
            self.phase1 &= ~(p1 & (~changed | (self.phase1_done >= cfg.phase1_steps)))

    # ------------------------------------------------------------------------------------------
    def _state(self):
        hist = [] if self.history is None else [self.history.ids, self.history.lengths]
        return [self.x, self.remask_count, self.block, self.step_in_block, self.rescues, self.steps, self.finished,
                self.bad_logits, self.phase1, self.phase1_done, self.sched_n, *hist]

    def _graphed_step(self):
        """Capture :meth:`step` in a CUDA graph (state restored after the warm-up) and return its replay."""
        saved = [t.clone() for t in self._state()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.step()  # warm-up: allocations, autotuning, lazy initialisation
        torch.cuda.current_stream().wait_stream(side)
        for t, s in zip(self._state(), saved):
            t.copy_(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.step()
        for t, s in zip(self._state(), saved):  # capture records without running, but be safe
            t.copy_(s)
        return graph.replay

    def run(self, trajectory: list | None = None) -> int:
        """Step until every row has finished; returns the number of model calls.

        The device-side flags (all rows finished, bad logits seen) are read every
        ``cfg.check_every`` steps: one host synchronisation each time, none inside a step.
        """
        if bool(self.finished.all()):
            return 0
        step = self._graphed_step() if self.cfg.cuda_graph and self.x.is_cuda else self.step
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
