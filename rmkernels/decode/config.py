"""Decoding configuration: every knob of the Reflective Masking step loop (docs/spec.md §2, §3, §8, §10)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from rmkernels.decode.schedule import SCHEDULES

SAMPLERS = ("rm", "low_confidence", "confidence_remask")
REVEAL_MODES = ("topk", "threshold", "all")
CACHE_MODES = ("none", "prefix", "dual")
COUNTER_STRIDE = 1 << 24  # RNG counter of (step of a row, position) = step * 2**24 + position (docs/spec.md §7)
REMASK_SCOPES = ("all", "block")


@dataclass
class DecodeConfig:
    """Knobs of :func:`rmkernels.generate`. Defaults follow docs/spec.md.

    Schedule
        steps : step budget per sequence, split evenly over its blocks.
        block_size : semi-autoregressive block length in generated positions (LLaDA); ``None`` =
            one block holding every editable position and every step.
    Reveal (masked positions whose candidate is not the mask)
        reveal : ``"topk"`` (the ``reveal_per_step`` most confident), ``"threshold"`` (every one with
            ``p >= reveal_threshold``, at least the best one) or ``"all"`` (all of them; Sudoku).
    Re-mask (visible generated positions)
        remask : enable the reflective re-mask ``p(mask) > p(token)``.
        remask_interval : re-mask on steps where ``step % remask_interval == 0``.
        max_remask : cap on re-masks per position (-1 = no cap).
    Stuck rescue (docs/spec.md §6: an extension of §2, off by default)
        rescue_ratio : ``None`` = off. Else, where the RM rule would stop a row at a fixed point (no
            reveal, no re-mask), it re-masks instead the visible editable positions with
            ``p(mask) > rescue_ratio * p(token)`` and goes on; with none of those it stops.
        max_rescues : rescues per row and block.
    Two-phase editing (docs/spec.md §10, off by default)
        phase1_threshold : ``None`` = off. Else, before the first block, phase 1 re-masks every
            visible editable token with ``p(mask) > phase1_threshold`` and ``p(mask) > p(token)``
            (nothing is revealed), for at most ``phase1_steps`` steps and until a step changes
            nothing; then the usual loop (phase 2) unmasks with the RM rule active. Phase-1 steps
            come on top of ``steps``.
        phase1_steps : the most phase-1 steps.
        schedule : ``None`` (``reveal`` decides) or ``"linear"`` / ``"cosine"`` (MaskGIT): of the
            ``n`` positions masked when a block starts, ``ceil(n * f(t / T))`` are still to be
            masked after its step ``t``; each step reveals the most confident masked positions in
            excess of that target, at least one (:mod:`rmkernels.decode.schedule`). Needs
            ``reveal="topk"`` (the schedule sets the per-step ``k``).
        schedule_steps : ``T`` (``None``: the block's step budget); steps past ``T`` reveal every
            candidate, until the fixed point or the budget.
    History Reference
        history_steps : H, states kept per sequence (0 = off). Needs a model with input embeddings.
        history_decay : lambda in ``w_d = exp(-lambda * (d - 1))``.
        history_rotate : rotate each history embedding by its distance.
    Sampling
        temperature : 0 = argmax candidates; > 0 = Gumbel-max from a counter RNG keyed by
            ``(seed, step of the row, position)``, so samples do not depend on batch composition.
        seed : RNG seed for ``temperature > 0`` (``None``: drawn once from torch's generator).
        allow_mask_candidate : ``False`` = reveal every masked position with the best non-mask id.
        suppress_tokens : ids never proposed (their logits are set to -inf; not the mask id).
        cfg_scale : LLaDA-style unsupervised classifier-free guidance (0 = off).
    Sampler
        sampler : ``"rm"`` (Reflective Masking), ``"low_confidence"`` (LLaDA: top-k reveal, never
            re-mask) or ``"confidence_remask"`` (training-free heuristic: re-mask visible tokens
            whose own probability is below ``remask_threshold``, as Diffulex / dInfer with 0.4).
    Output
        fill_remaining : fill positions still masked at the end with the best non-mask id (one
            more forward pass).
        record_trajectory : keep the canvas after every step (``DecodeOutput.trajectory``).
    Execution
        check_every : the fast path looks at its device-side "all finished" flag every this many
            steps (one host synchronisation each time).
        cuda_graph : on CUDA, capture one step in a CUDA graph and replay it (the model forward
            must be capturable: static shapes, no host synchronisation). With a KV cache: one graph
            for the refresh step and one per span width (one for ``dual``, one per block for ``prefix``).
        fused_head : compute the statistics from the LM head's input with ``rm_linear_stats``
            (docs/spec.md §9) instead of materialising the ``[B, L, V]`` logits. Needs a model whose adapter
            gives hidden states and the head (``RMModel.supports_fused_head``). The logits are then
            accumulated in float32 from the head's inputs (not rounded to the model's dtype).
    KV cache and edit scope (docs/spec.md §8; needs a model with the KV-cache API, e.g. the native LLaDA / Dream)
        cache : ``"none"`` (every step forwards the whole canvas), ``"prefix"`` (at a block's start,
            and every ``cache_refresh`` steps, a full forward stores every position's keys/values;
            the other steps forward the active block and the generated positions after it) or
            ``"dual"`` (the same refreshes; the other steps forward the active block only). With a
            cache the rows of a batch go through the blocks in lockstep (a row at its fixed point
            waits, unchanged, for the others), and only the active block is edited.
        cache_refresh : ``None`` = refresh only at a block's start; ``n`` = also at every ``n``-th
            step of a block (``1``: every step is a full forward, i.e. no approximation).
        remask_scope : the generated positions a step may edit (reveal and re-mask): ``"all"`` (every
            one up to the end of the active block, docs/spec.md §2) or ``"block"`` (the active block only).
            ``None`` = ``"block"`` with a cache, ``"all"`` without; ``"all"`` with a cache is an error.
    """

    steps: int = 64
    block_size: int | None = None
    reveal: str = "topk"
    reveal_per_step: int = 1
    reveal_threshold: float = 0.9
    remask: bool = True
    remask_interval: int = 1
    max_remask: int = -1
    rescue_ratio: float | None = None
    max_rescues: int = 1
    phase1_threshold: float | None = None
    phase1_steps: int = 8
    schedule: str | None = None
    schedule_steps: int | None = None
    history_steps: int = 6
    history_decay: float = 0.0
    history_rotate: bool = True
    temperature: float = 0.0
    seed: int | None = None
    allow_mask_candidate: bool = True
    suppress_tokens: tuple = field(default_factory=tuple)
    cfg_scale: float = 0.0
    sampler: str = "rm"
    remask_threshold: float = 0.4
    fill_remaining: bool = False
    record_trajectory: bool = False
    check_every: int = 4
    cuda_graph: bool = False
    cache: str = "none"
    cache_refresh: int | None = None
    remask_scope: str | None = None
    fused_head: bool = False

    def __post_init__(self):
        self.suppress_tokens = tuple(int(t) for t in self.suppress_tokens)
        self.validate()

    def validate(self) -> "DecodeConfig":
        def need(ok: bool, name: str, what: str):
            if not ok:
                raise ValueError(f"{name} must be {what}, got {getattr(self, name)!r}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        need(is_int(self.steps) and self.steps >= 1, "steps", "an int >= 1")
        need(self.block_size is None or (is_int(self.block_size) and self.block_size >= 1), "block_size", "None or an int >= 1")
        need(self.reveal in REVEAL_MODES, "reveal", f"one of {REVEAL_MODES}")
        need(is_int(self.reveal_per_step) and self.reveal_per_step >= 1, "reveal_per_step", "an int >= 1")
        need(0.0 <= float(self.reveal_threshold) <= 1.0, "reveal_threshold", "in [0, 1]")
        need(is_int(self.remask_interval) and self.remask_interval >= 1, "remask_interval", "an int >= 1")
        need(is_int(self.max_remask) and self.max_remask >= -1, "max_remask", "-1 (no cap) or an int >= 0")
        need(self.rescue_ratio is None or 0.0 < float(self.rescue_ratio) < 1.0, "rescue_ratio", "None or in (0, 1)")
        need(is_int(self.max_rescues) and self.max_rescues >= 0, "max_rescues", "an int >= 0")
        need(self.phase1_threshold is None or 0.0 <= float(self.phase1_threshold) < 1.0, "phase1_threshold",
             "None or in [0, 1)")
        need(is_int(self.phase1_steps) and self.phase1_steps >= 1, "phase1_steps", "an int >= 1")
        need(self.schedule is None or self.schedule in SCHEDULES, "schedule", f"None or one of {SCHEDULES}")
        need(self.schedule is None or self.reveal == "topk", "reveal", "'topk' when a schedule is set")
        need(self.schedule_steps is None or (is_int(self.schedule_steps) and self.schedule_steps >= 1),
             "schedule_steps", "None or an int >= 1")
        need(is_int(self.history_steps) and self.history_steps >= 0, "history_steps", "an int >= 0")
        need(float(self.history_decay) >= 0.0, "history_decay", ">= 0")
        need(0.0 <= float(self.temperature) < float("inf"), "temperature", "a finite number >= 0")
        need(self.seed is None or is_int(self.seed), "seed", "None or an int")
        need(float(self.cfg_scale) >= 0.0, "cfg_scale", ">= 0")
        need(self.sampler in SAMPLERS, "sampler", f"one of {SAMPLERS}")
        need(self.rescue_ratio is None or self.remask_rule == "rm", "rescue_ratio",
             "None unless the sampler is 'rm' with remask on")
        need(0.0 <= float(self.remask_threshold) <= 1.0, "remask_threshold", "in [0, 1]")
        need(is_int(self.check_every) and self.check_every >= 1, "check_every", "an int >= 1")
        need(self.cache in CACHE_MODES, "cache", f"one of {CACHE_MODES}")
        need(self.cache_refresh is None or (is_int(self.cache_refresh) and self.cache_refresh >= 1), "cache_refresh",
             "None or an int >= 1")
        need(self.remask_scope is None or self.remask_scope in REMASK_SCOPES, "remask_scope",
             f"None or one of {REMASK_SCOPES}")
        need(self.cache == "none" or self.remask_scope != "all", "remask_scope",
             "'block' (or None) with a KV cache: only the active block has fresh logits")
        need(isinstance(self.fused_head, bool), "fused_head", "a bool")
        need(self.cache == "none" or self.phase1_threshold is None, "phase1_threshold",
             "None with a KV cache (phase 1 edits every generated position, docs/spec.md §10)")
        need(self.cache == "none" or self.schedule is None, "schedule",
             "None with a KV cache (the schedules are defined without one, docs/spec.md §10)")
        return self

    @property
    def max_steps(self) -> int:
        """The most steps a row can take: ``steps`` plus the phase-1 steps of two-phase editing."""
        return self.steps + (self.phase1_steps if self.phase1_threshold is not None else 0)

    @property
    def edit_scope(self) -> str:
        """``remask_scope`` resolved: ``"block"`` with a cache, ``"all"`` without (unless set)."""
        if self.remask_scope is not None:
            return self.remask_scope
        return "all" if self.cache == "none" else "block"

    @property
    def remask_rule(self) -> str | None:
        """``"rm"`` (p(mask) > p(token)), ``"confidence"`` (p(token) < threshold) or ``None``."""
        if self.sampler == "low_confidence" or not self.remask:
            return None
        return "confidence" if self.sampler == "confidence_remask" else "rm"

    def to_dict(self) -> dict:
        return asdict(self)
