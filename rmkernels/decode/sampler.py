"""The decision part of one Reflective Masking step, and a step-level sampler with no model inside.

:func:`decide_step` is docs/spec.md §2 steps 1, 2 and 2b for a whole batch at once, from the statistics of
one forward pass: which masked positions to reveal (and with which token) and which visible ones
to re-mask. It is a pure tensor function (no host synchronisation) and the only implementation of
that decision on the device: :class:`~rmkernels.decode.fast.FastDecoder` and :class:`RMSampler`
both call it. (The readable reference loop, ``reference.py``, is the oracle both are tested against.)

:class:`RMSampler` is the drop-in API for other engines' loops (SGLang's ``DllmAlgorithm``,
dInfer's ``decoder.decode``, a hand-written loop): the engine runs its model and hands the logits
over; the sampler keeps every piece of per-row state on the device::

    sampler = RMSampler(DecodeConfig(reveal_per_step=2), mask_id)
    state = sampler.init(x, editable)             # x [B, N] canvas, editable [B, N] bool
    for _ in range(budget):
        logits = engine_forward(x)                # [B, N, V], the engine's model
        x, done = sampler.step(logits, x, state)  # x updated in place; done [B] bool on the device
        if done.all():                            # the engine decides when to look (a host sync)
            break

See ``docs/sampler.md`` for engine hooks.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch

from rmkernels._utils import INT_DTYPES, check_tensor
from rmkernels.decode.config import COUNTER_STRIDE, DecodeConfig
from rmkernels.decode.forward import check_suppress_tokens
from rmkernels.history import HistoryBuffer
from rmkernels.ops.rm_stats import RMStats, rm_stats


class StepDecision(NamedTuple):
    """What one step does, per position ``[B, N]`` (``rescued`` and ``bad`` per row / batch)."""

    cand: torch.Tensor  # int64, the token a revealed position takes
    reveal: torch.Tensor  # bool
    remask: torch.Tensor  # bool
    rescued: torch.Tensor  # [B] bool: the stuck rescue fired (docs/spec.md §2, 2b)
    bad: torch.Tensor  # [] bool: an editable position had NaN / all -inf logits


def select_reveal(cfg: DecodeConfig, R: torch.Tensor, score: torch.Tensor, k: int,
                  row_k: torch.Tensor | None = None) -> torch.Tensor:
    """Which revealable positions ``R [B, N]`` to reveal, by ``score [B, N]`` (ties: lowest position);
    ``row_k [B]``: a count per row (a two-phase schedule's, docs/spec.md §10) instead of ``cfg.reveal``."""
    if cfg.reveal == "all" and row_k is None:
        return R
    key = torch.where(R, score, -1.0)  # probabilities are >= 0, so non-candidates sort last
    order = torch.sort(key, dim=1, descending=True, stable=True).indices  # [B, N]
    if row_k is not None:  # the row_k best candidates of each row: rank of every position in the order
        pos = torch.arange(R.shape[1], device=R.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(1, order, pos)
        return R & (rank < row_k[:, None])
    if cfg.reveal == "topk":
        top = order[:, :k]
        return torch.zeros_like(R).scatter(1, top, key.gather(1, top) >= 0)
    best = torch.zeros_like(R).scatter(1, order[:, :1], key.gather(1, order[:, :1]) >= 0)
    return (R & (score >= cfg.reveal_threshold)) | best


def decide_step(cfg: DecodeConfig, st: RMStats, x: torch.Tensor, G: torch.Tensor, mask_id: int, *,
                remask_count: torch.Tensor, steps: torch.Tensor, rescues: torch.Tensor,
                rescue_ratio: torch.Tensor, k: torch.Tensor | None = None) -> StepDecision:
    """docs/spec.md §2 steps 1 (reveal), 2 (re-mask) and 2b (stuck rescue) for every row, without applying them.

    Parameters
    ----------
    cfg : DecodeConfig
    st : RMStats
        Statistics ``[B, N]`` of the current canvas (ids ``-1`` mark NaN / all ``-inf`` rows).
    x : Tensor ``[B, N]`` int64
        The canvas.
    G : Tensor ``[B, N]`` bool
        The positions this step may edit (inactive rows: none).
    mask_id : int
    remask_count : Tensor ``[B, N]`` int64
        Re-masks so far per position (``max_remask``).
    steps : Tensor ``[B]`` int64
        Steps each row has taken (``remask_interval``).
    rescues : Tensor ``[B]`` int64
        Stuck rescues in the row's current block (``max_rescues``).
    rescue_ratio : Tensor ``[]`` float32
        ``cfg.rescue_ratio`` on the device (made once by the caller: CUDA-graph capture).
    k : Tensor ``[B]`` int64, optional
        Reveals per row from a schedule (``cfg.schedule``, docs/spec.md §10) instead of ``reveal_per_step``.

    Returns
    -------
    StepDecision
    """
    M = mask_id
    valid = st.top_id >= 0  # rm_stats flags NaN / all -inf rows with id -1
    bad = (G & ~valid).any()
    masked = x == M

    # 1. reveal: masked editable positions whose candidate is not the mask (or the best non-mask id)
    if cfg.allow_mask_candidate:
        cand, score = st.top_id, st.top_p
        R = G & masked & valid & (cand != M)
    else:
        cand, score = st.best_id, st.best_p
        R = G & masked & valid
    reveal = select_reveal(cfg, R, score, min(cfg.reveal_per_step, x.shape[1]), k)

    # 2. re-mask visible editable tokens the model now doubts
    rescued = torch.zeros_like(steps, dtype=torch.bool)
    rule = cfg.remask_rule
    if rule is not None:
        due = (steps % cfg.remask_interval == 0)[:, None]  # [B, 1]
        Q = G & ~masked & valid & due
        if cfg.max_remask >= 0:
            Q &= remask_count < cfg.max_remask
        doubt = st.mask_p > st.cur_p if rule == "rm" else st.cur_p < cfg.remask_threshold
        remask = Q & doubt
        if cfg.rescue_ratio is not None:  # 2b. stuck rescue, at a fixed point of the rule
            stuck = ~(reveal | remask).any(1) & (rescues < cfg.max_rescues)  # [B]
            rescue = Q & (st.mask_p > rescue_ratio * st.cur_p) & stuck[:, None]
            remask = remask | rescue
            rescued = rescue.any(1)
    else:
        remask = torch.zeros_like(reveal)
    return StepDecision(cand, reveal, remask, rescued, bad)


# ---------------------------------------------------------------------------------------------
@dataclass
class SamplerState:
    """Per-row state of :class:`RMSampler`, all on the device and updated in place by ``step``.

    editable : ``[B, N]`` bool, the positions the sampler may edit (the engine's active block).
    positions : ``[B, N]`` int64, absolute positions of the columns (the RNG counters' position).
    remask_count : ``[B, N]`` int64, re-masks so far per position (``max_remask``).
    steps : ``[B]`` int64, steps taken since the first ``init`` (RNG counter, ``remask_interval``).
    step_in_block : ``[B]`` int64, steps since the last ``init``.
    budget : ``[B]`` int64, the step budget of this ``init``.
    rescues : ``[B]`` int64, stuck rescues since the last ``init``.
    done : ``[B]`` bool, the row reached a fixed point or spent its budget (no further edits).
    bad_logits : ``[]`` bool, an editable position had NaN / all ``-inf`` logits (check it when you sync).
    history : HistoryBuffer or None, the last ``history_steps`` states of each row (for HER inputs).
    """

    editable: torch.Tensor
    positions: torch.Tensor
    remask_count: torch.Tensor
    steps: torch.Tensor
    step_in_block: torch.Tensor
    budget: torch.Tensor
    rescues: torch.Tensor
    done: torch.Tensor
    bad_logits: torch.Tensor
    history: HistoryBuffer | None = None


class RMSampler:
    """Reflective Masking one step at a time, for an engine that runs the model itself.

    Parameters
    ----------
    config : DecodeConfig, optional
        The step knobs (``reveal``, ``reveal_per_step``, ``reveal_threshold``, ``remask``,
        ``remask_interval``, ``max_remask``, ``rescue_ratio``, ``max_rescues``, ``sampler``,
        ``remask_threshold``, ``temperature``, ``seed``, ``allow_mask_candidate``,
        ``suppress_tokens``, ``history_*``) and ``steps``, the default budget of one ``init``.
        Blocks, caching and the forward are the engine's: ``block_size``, ``fill_remaining``,
        ``record_trajectory``, ``check_every``, ``cuda_graph`` and ``remask_scope`` are not used
        (``editable`` says what a step may edit); ``cfg_scale > 0`` and a ``cache`` are rejected
        (guidance and caching belong to the engine's forward: pass guided logits).
    mask_id : int
        The mask token id.
    kernels : str
        ``impl`` of ``rm_stats`` (``"auto"``: the kernel for the logits' device).
    **overrides
        Replace single fields of ``config``.

    The step is the one :class:`~rmkernels.decode.fast.FastDecoder` runs (:func:`decide_step`):
    device-resident (no host synchronisation), batch-invariant (a row's result depends only on its
    own logits and state; samples are keyed by ``(seed, step of the row, position)``), and
    capturable in a CUDA graph (static shapes; ``init`` with ``state=`` updates in place).

    Example
    -------
    >>> sampler = RMSampler(DecodeConfig(reveal_per_step=2), mask_id=M)  # doctest: +SKIP
    >>> state = sampler.init(x, x == M)                                   # doctest: +SKIP
    >>> x, done = sampler.step(model(x).logits, x, state)                 # doctest: +SKIP
    """

    def __init__(self, config: DecodeConfig | None = None, mask_id: int | None = None, *, kernels: str = "auto",
                 **overrides):
        cfg = replace(config or DecodeConfig(), **overrides) if overrides else (config or DecodeConfig())
        cfg.validate()
        if isinstance(mask_id, bool) or not isinstance(mask_id, int) or mask_id < 0:
            raise ValueError(f"mask_id must be an int >= 0 (the model's mask token id), got {mask_id!r}")
        if cfg.cfg_scale > 0:
            raise ValueError(f"cfg_scale={cfg.cfg_scale}: RMSampler takes logits as given; apply guidance in the "
                             "engine's forward and pass cfg_scale=0")
        if cfg.cache != "none":
            raise ValueError(f"cache={cfg.cache!r}: RMSampler has no model; caching belongs to the engine's forward")
        if cfg.phase1_threshold is not None or cfg.schedule is not None:
            raise ValueError("phase1_threshold / schedule (two-phase editing, docs/spec.md §10) belong to generate's "
                             "loop; RMSampler takes neither (pass None)")
        check_suppress_tokens(cfg, mask_id)
        self.cfg, self.mask_id, self.kernels = cfg, mask_id, kernels
        self.seed = cfg.seed if cfg.seed is not None else (
            int(torch.randint(0, 2**62, (1,))) if cfg.temperature > 0 else 0)
        self._consts: dict = {}

    def _const(self, device):
        """Device constants made once per device (not inside a step: CUDA-graph capture)."""
        key = str(device)
        if key not in self._consts:
            self._consts[key] = (
                torch.tensor(self.cfg.suppress_tokens, dtype=torch.int64, device=device),
                torch.tensor(self.cfg.rescue_ratio or 0.0, dtype=torch.float32, device=device),
            )
        return self._consts[key]

    def init(self, x: torch.Tensor, editable: torch.Tensor, *, steps: int | None = None,
             positions: torch.Tensor | None = None, state: SamplerState | None = None) -> SamplerState:
        """Start (or continue) decoding ``x`` where ``editable`` is True.

        Parameters
        ----------
        x : Tensor ``[B, N]`` int64
            The canvas (masked positions hold ``mask_id``).
        editable : Tensor ``[B, N]`` bool
            Positions the steps may reveal or re-mask (e.g. the active block, or every generated
            position up to its end).
        steps : int, optional
            Step budget of this call (default ``config.steps``); a row is ``done`` at its fixed
            point or when the budget is spent.
        positions : Tensor ``[N]`` or ``[B, N]`` int64, optional
            Absolute positions of the columns (default ``0 .. N-1``): the RNG counter's position,
            so sampling matches ``generate`` on the same canvas.
        state : SamplerState, optional
            The previous block's state: kept are the step counters, re-mask counts and history;
            ``editable``, the budget, rescues and ``done`` start afresh. Updated in place (same
            storage, so a captured CUDA graph stays valid) and returned.

        Returns
        -------
        SamplerState
        """
        check_tensor("x", x, dtypes=INT_DTYPES, ndim=2)
        check_tensor("editable", editable, dtypes=(torch.bool,), ndim=2)
        if editable.shape != x.shape:
            raise ValueError(f"editable shape {tuple(editable.shape)} must equal x shape {tuple(x.shape)}")
        if editable.device != x.device:
            raise ValueError(f"editable is on {editable.device}, x on {x.device}")
        if x.dtype != torch.int64:
            raise ValueError(f"x must be int64 (it is updated in place), got {x.dtype}")
        budget = self.cfg.steps if steps is None else steps
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        B, N = x.shape
        dev = x.device
        if positions is None:
            positions = torch.arange(N, device=dev)
        check_tensor("positions", positions, dtypes=INT_DTYPES)
        if positions.device != dev or positions.shape not in ((N,), (B, N)):
            raise ValueError(f"positions must be [N={N}] or [B, N] on {dev}, got {tuple(positions.shape)} on "
                             f"{positions.device}")
        positions = positions.long().expand(B, N)
        if state is not None:
            if state.editable.shape != x.shape or state.editable.device != dev:
                raise ValueError(f"state is for a [{tuple(state.editable.shape)}] canvas on {state.editable.device}; "
                                 f"x is {tuple(x.shape)} on {dev}")
            state.editable.copy_(editable)
            state.positions.copy_(positions)
            state.step_in_block.zero_()
            state.budget.fill_(budget)
            state.rescues.zero_()
            state.done.zero_()
            return state
        H = self.cfg.history_steps
        z = lambda: torch.zeros(B, dtype=torch.int64, device=dev)  # noqa: E731
        return SamplerState(
            editable=editable.clone(), positions=positions.clone(),
            remask_count=torch.zeros(B, N, dtype=torch.int64, device=dev), steps=z(), step_in_block=z(),
            budget=torch.full((B,), budget, dtype=torch.int64, device=dev), rescues=z(),
            done=torch.zeros(B, dtype=torch.bool, device=dev), bad_logits=torch.zeros((), dtype=torch.bool, device=dev),
            history=HistoryBuffer(B, N, H, device=dev, fill=self.mask_id) if H > 0 else None,
        )

    def step(self, logits: torch.Tensor, x: torch.Tensor, state: SamplerState) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: reveal / re-mask from ``logits`` of the current canvas, in place.

        Parameters
        ----------
        logits : Tensor ``[B, N, V]``
            The model's (guided) logits for ``x``, per position (a shifted model such as Dream:
            already shifted).
        x : Tensor ``[B, N]`` int64
            The canvas ``init`` was given (or its successor); updated in place.
        state : SamplerState

        Returns
        -------
        (x, done) : the canvas and ``state.done`` (``[B]`` bool, device tensors; no host sync).
        """
        cfg, M = self.cfg, self.mask_id
        if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(x.shape):
            raise ValueError(f"logits must be [B, N, V] with [B, N] = {tuple(x.shape)}, got {tuple(logits.shape)}")
        if M >= logits.shape[-1]:
            raise ValueError(f"mask_id={M} is outside the logits' vocabulary (V={logits.shape[-1]})")
        suppress_idx, rescue_ratio = self._const(x.device)
        if cfg.suppress_tokens:
            if max(cfg.suppress_tokens) >= logits.shape[-1]:
                raise ValueError(f"suppress_tokens holds ids outside the vocabulary (V={logits.shape[-1]})")
            logits = logits.index_fill(-1, suppress_idx, float("-inf"))
        active = ~state.done  # [B]
        G = state.editable & active[:, None]
        counters = state.steps[:, None] * COUNTER_STRIDE + state.positions
        st = rm_stats(logits, x, M, temperature=cfg.temperature, seed=self.seed, offset=counters, check=False,
                      impl=self.kernels)
        d = decide_step(cfg, st, x, G, M, remask_count=state.remask_count, steps=state.steps,
                        rescues=state.rescues, rescue_ratio=rescue_ratio)
        changed = (d.reveal | d.remask).any(1)
        if state.history is not None:
            state.history.push(x, changed)  # the state before the change
        x.copy_(torch.where(d.remask, M, torch.where(d.reveal, d.cand, x)))
        state.remask_count += d.remask
        state.rescues += d.rescued
        state.steps += active
        state.step_in_block += active
        state.bad_logits |= d.bad
        state.done |= active & (~changed | (state.step_in_block >= state.budget))
        return x, state.done

    def input_embeds(self, embedding_weight: torch.Tensor, history_norm, x: torch.Tensor, state: SamplerState,
                     token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """History Reference input embeddings ``[B, N, D]`` for the next forward (docs/spec.md §3).

        Parameters
        ----------
        embedding_weight : Tensor ``[V, D]``
            The model's input embedding table.
        history_norm : HistoryNorm
            The trained HER LayerNorm.
        x : Tensor ``[B, N]``
            The current canvas.
        state : SamplerState
            Its history buffer (``history_steps > 0``).
        token_mask : Tensor ``[B, N]`` bool, optional
            HER's ``g`` (generated positions; default ``state.editable``).
        """
        if state.history is None:
            raise ValueError("history_steps is 0: this sampler keeps no history (feed input_ids instead)")
        g = state.editable if token_mask is None else token_mask
        return history_norm(embedding_weight, x, state.history.ids, state.history.lengths, g,
                            decay=self.cfg.history_decay, rotate=self.cfg.history_rotate, check=False,
                            impl=self.kernels)


__all__ = ["COUNTER_STRIDE", "RMSampler", "SamplerState", "StepDecision", "decide_step", "select_reveal"]
