"""Reflective Masking post-training data: synthetic trajectories and oracle labels (docs/spec.md §4).

From a clean target (prompt + answer) and its answer mask:

1. Noisy answer positions: ``round(corruption_rate * n_answer)`` per row, or a count drawn
   uniformly from ``corruption_count = (lo, hi)``. Each noisy position is *wrong* with
   probability ``wrong_fraction``, *masked* otherwise.
2. Wrong tokens: one batched no-grad forward of the frozen base model on the state with every
   noisy position masked; the wrong token is drawn uniformly from the ``topk`` highest logits
   with the gold token and the mask id excluded (and, with ``wrong_ids``, only those ids allowed).
   Without a base model it is drawn uniformly from ``wrong_ids`` (default: every id but the mask)
   minus the gold token.
3. A trajectory of ``frames`` canvases ``0 .. T-1``: frame 0 is the corrupted state, frame T-1 is
   the target. A masked position is ``M`` before its reveal frame ``r`` in ``[1, T-1]`` and gold
   from then on; a wrong position keeps its wrong token before frame ``a``, is ``M`` on
   ``[a, r)`` and gold from ``r`` on, with ``1 <= a < r <= T-1``. Correct positions never change.
4. The current frame ``c`` is uniform in ``[0, T-1]``. Its history is what the decoder's FIFO
   would hold after stepping through frames ``0 .. c`` (docs/spec.md §3: a state is pushed only when the
   step after it changed the sequence): the frames ``f < c`` with ``frame[f] != frame[f+1]``,
   most recent first (slot 0 = distance 1), at most ``history_steps`` of them.
5. Labels on answer positions of the current frame: ``M`` -> gold (reveal), wrong -> ``M``
   (mask), correct -> itself (keep). Prompt and padding positions are ignored.

Randomness comes from the counter RNG (:mod:`rmkernels.reference.rng`): row ``b`` uses the stream
``(seed, row_ids[b])``, so a row's synthesis does not depend on the other rows of its batch and
the same ``(seed, row_ids)`` gives the same data on every call (up to the base model's logits).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from rmkernels._utils import INT_DTYPES, check_index, check_tensor
from rmkernels.decode.model import as_rm_model
from rmkernels.reference.loss import PART_IGNORE, PART_KEEP, PART_MASK, PART_REVEAL
from rmkernels.reference.rng import uniform_noise

__all__ = ["RMBatch", "SynthConfig", "SynthTrajectory", "build_trajectories", "make_batch", "synthesize",
           "trajectories_from_corruption"]

KIND_CLEAN, KIND_MASKED, KIND_WRONG = 0, 1, 2


@dataclass
class SynthConfig:
    """How clean targets are corrupted into training trajectories.

    Parameters
    ----------
    corruption_rate : float or None
        Share of answer positions per row made noisy (rounded). Exactly one of ``corruption_rate``
        and ``corruption_count`` is set.
    corruption_count : (lo, hi) or None
        Noisy positions per row drawn uniformly from ``lo .. hi`` (capped at the row's answer size).
    wrong_fraction : float
        Probability that a noisy position holds a wrong token (else it is masked).
    topk : int
        Wrong tokens are drawn uniformly from the base model's top-k (gold and mask excluded).
    frames : int
        Trajectory length ``T >= 3``.
    history_steps : int
        History slots ``H`` kept per example (a trainer may use fewer).
    wrong_ids : tuple of int or None
        Ids a wrong token may take (e.g. the nine digits of Sudoku); default every id but the mask.
    """

    corruption_rate: float | None = 0.3
    corruption_count: tuple[int, int] | None = None
    wrong_fraction: float = 0.5
    topk: int = 8
    frames: int = 6
    history_steps: int = 6
    wrong_ids: tuple[int, ...] | None = None

    def __post_init__(self):
        if (self.corruption_rate is None) == (self.corruption_count is None):
            raise ValueError("set exactly one of corruption_rate and corruption_count")
        if self.corruption_rate is not None and not 0.0 <= float(self.corruption_rate) <= 1.0:
            raise ValueError(f"corruption_rate must be in [0, 1], got {self.corruption_rate}")
        if self.corruption_count is not None:
            lo, hi = (int(v) for v in self.corruption_count)
            if not 0 <= lo <= hi:
                raise ValueError(f"corruption_count must be (lo, hi) with 0 <= lo <= hi, got {self.corruption_count}")
            self.corruption_count = (lo, hi)
        if not 0.0 <= float(self.wrong_fraction) <= 1.0:
            raise ValueError(f"wrong_fraction must be in [0, 1], got {self.wrong_fraction}")
        if int(self.topk) < 1:
            raise ValueError(f"topk must be >= 1, got {self.topk}")
        if int(self.frames) < 3:
            raise ValueError(f"frames must be >= 3 (wrong -> M -> gold), got {self.frames}")
        if int(self.history_steps) < 0:
            raise ValueError(f"history_steps must be >= 0, got {self.history_steps}")
        if self.wrong_ids is not None:
            self.wrong_ids = tuple(sorted({int(i) for i in self.wrong_ids}))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SynthConfig":
        names = {f.name for f in fields(cls)}
        d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**d)


@dataclass
class RMBatch:
    """One training batch: the current frame, its history and oracle labels.

    ``input_ids``, ``labels`` int64 ``[B, L]``; ``part`` int64 ``[B, L]`` (0 reveal, 1 mask,
    2 keep, -1 ignore); ``history_ids`` int64 ``[B, H, L]`` (slot 0 = distance 1; slots at or past
    ``history_len[b]`` are filler); ``history_len`` int64 ``[B]``; ``token_mask`` bool ``[B, L]``
    (answer positions, the HER gate); ``attention_mask`` bool ``[B, L]`` or None.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    part: torch.Tensor
    history_ids: torch.Tensor
    history_len: torch.Tensor
    token_mask: torch.Tensor
    attention_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def tensors(self) -> dict:
        """The fields that are set, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def map(self, fn) -> "RMBatch":
        """A batch with ``fn`` applied to every tensor (``batch.map(lambda t: t[idx])``)."""
        return RMBatch(**{k: fn(v) for k, v in self.tensors().items()})

    def to(self, device) -> "RMBatch":
        return self.map(lambda t: t.to(device, non_blocking=True))

    @staticmethod
    def cat(batches) -> "RMBatch":
        batches = list(batches)
        names = batches[0].tensors().keys()
        return RMBatch(**{k: torch.cat([b.tensors()[k] for b in batches]) for k in names})


@dataclass
class SynthTrajectory:
    """Full synthetic trajectories: ``frames [B, T, L]``, ``kind [B, L]`` (0 clean, 1 masked,
    2 wrong), ``wrong_token``, ``mask_at`` and ``reveal_at`` ``[B, L]`` (event frames; 0 on clean
    positions), ``current [B]`` (the sampled current frame)."""

    frames: torch.Tensor
    kind: torch.Tensor
    wrong_token: torch.Tensor
    mask_at: torch.Tensor
    reveal_at: torch.Tensor
    current: torch.Tensor


def _randint(u: torch.Tensor, n) -> torch.Tensor:
    """Uniform integers in ``[0, n)`` from uniforms ``u`` in (0, 1) (``n`` int or tensor >= 1)."""
    n = torch.as_tensor(n, device=u.device)
    return torch.minimum((u.double() * n).long(), n - 1)


def vocab_size_of(base_model, vocab_size) -> int:
    """The vocabulary size: ``base_model``'s embedding rows (checked against ``vocab_size`` if both
    are given), else ``vocab_size``; ``ValueError`` when neither is known or they differ."""
    if base_model is None:
        if vocab_size is None:
            raise ValueError("vocab_size is required when base_model is None")
        return int(vocab_size)
    v_model = int(base_model.get_input_embeddings().num_embeddings)
    if vocab_size is not None and int(vocab_size) != v_model:
        raise ValueError(f"base_model vocabulary ({v_model}) differs from vocab_size={vocab_size} of the data")
    return v_model


def check_inputs(targets, answer_mask, attention_mask, row_ids, mask_id, V, config):
    """Validate the inputs of the synthesis (shapes, dtypes, id ranges, answer positions, config);
    returns ``mask_id`` as an int. Raises ``ValueError`` naming the argument."""
    check_tensor("targets", targets, dtypes=INT_DTYPES, ndim=2)
    check_tensor("answer_mask", answer_mask, dtypes=(torch.bool,), ndim=2)
    if answer_mask.shape != targets.shape:
        raise ValueError(f"answer_mask shape {tuple(answer_mask.shape)} != targets shape {tuple(targets.shape)}")
    if targets.numel() == 0:
        raise ValueError(f"targets must be non-empty, got shape {tuple(targets.shape)}")
    mask_id = check_index("mask_id", mask_id, V)
    t = targets.long()
    if int(t.min()) < 0 or int(t.max()) >= V:
        raise ValueError(f"targets must lie in [0, V={V}), got range [{int(t.min())}, {int(t.max())}]")
    if bool((answer_mask & (t == mask_id)).any()):
        raise ValueError(f"targets hold the mask id {mask_id} at an answer position (gold must be a real token)")
    empty = (~answer_mask.any(1)).nonzero().flatten()
    if empty.numel():
        raise ValueError(f"answer_mask has no answer positions in row(s) {empty[:8].tolist()}")
    if attention_mask is not None:
        check_tensor("attention_mask", attention_mask, dtypes=(torch.bool,), ndim=2)
        if attention_mask.shape != targets.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != targets shape {tuple(targets.shape)}"
            )
        if bool((answer_mask & ~attention_mask).any()):
            raise ValueError("answer_mask marks positions that attention_mask excludes (padding)")
    if row_ids is not None:
        check_tensor("row_ids", row_ids, dtypes=INT_DTYPES, ndim=1)
        if row_ids.shape[0] != targets.shape[0]:
            raise ValueError(f"row_ids must have {targets.shape[0]} entries, got {row_ids.shape[0]}")
    if config.wrong_ids is not None:
        for i in config.wrong_ids:
            check_index("wrong_ids entry", i, V)
        if len(set(config.wrong_ids) - {mask_id}) < 2:
            raise ValueError(f"wrong_ids must hold at least two ids other than mask_id, got {config.wrong_ids}")
    return mask_id


@torch.no_grad()
def _wrong_from_model(base_model, state, gold, wrong, u, mask_id, V, config):
    """Wrong tokens at ``wrong`` positions: uniform over the base model's top-k (gold, mask excluded)."""
    device = next(base_model.parameters()).device
    was_training = base_model.training
    base_model.eval()
    try:
        logits = as_rm_model(base_model)(input_ids=state.to(device))  # [B, L, V] (.logits outputs unwrapped)
    finally:
        base_model.train(was_training)
    if logits.shape[-1] != V:
        raise ValueError(f"base_model returns {logits.shape[-1]} logits per position but its vocabulary is {V}")
    z = logits[wrong.to(device)].float()  # [Nw, V]
    g = gold[wrong].to(device)
    if config.wrong_ids is not None:
        allowed = torch.zeros(V, dtype=torch.bool, device=device)
        allowed[list(config.wrong_ids)] = True
        z = z.masked_fill(~allowed, float("-inf"))
    z[:, mask_id] = float("-inf")
    z.scatter_(1, g[:, None], float("-inf"))
    top_z, top_i = z.topk(min(int(config.topk), V), dim=1)  # [Nw, k]
    k_row = torch.isfinite(top_z).sum(1)  # candidates per position (NaN logits give none)
    if bool((k_row == 0).any()):
        raise ValueError("base_model left no finite wrong-token candidate at some position (NaN/-inf logits?)")
    pick = _randint(u[wrong].to(device), k_row)
    return top_i.gather(1, pick[:, None])[:, 0].to(gold.device)


def _wrong_uniform(gold, wrong, u, mask_id, V, config):
    """Wrong tokens uniform over ``wrong_ids`` (default all ids but the mask) minus the gold token."""
    ids = range(V) if config.wrong_ids is None else config.wrong_ids
    cand = torch.tensor([i for i in ids if i != mask_id], dtype=torch.long, device=gold.device)  # sorted
    g = gold[wrong]
    pos = torch.searchsorted(cand, g).clamp(max=cand.numel() - 1)
    has_gold = cand[pos] == g
    j = _randint(u[wrong], cand.numel() - has_gold.long())
    j = j + (has_gold & (j >= pos)).long()  # skip the gold id
    return cand[j]


def build_trajectories(
    targets: torch.Tensor,  # [B, L]
    answer_mask: torch.Tensor,  # [B, L] bool
    base_model,
    mask_id: int,
    config: SynthConfig,
    *,
    seed: int = 0,
    row_ids: torch.Tensor | None = None,  # [B]
    attention_mask: torch.Tensor | None = None,  # [B, L] bool
    vocab_size: int | None = None,
) -> SynthTrajectory:
    """Corrupt ``targets`` and build full trajectories (steps 1-3 of the module docstring).

    Parameters
    ----------
    targets, answer_mask, base_model, mask_id, config, seed, row_ids, attention_mask, vocab_size
        As in :func:`synthesize`.

    Returns
    -------
    SynthTrajectory
        Every frame of every row, the kind and event frames of each position, the current frame.

    Example
    -------
    >>> targets = torch.randint(0, 20, (2, 8)); answer = torch.ones(2, 8, dtype=torch.bool)
    >>> traj = build_trajectories(targets, answer, None, 20, SynthConfig(frames=5), vocab_size=21)
    >>> traj.frames.shape                                      # [B, T, L]; frame T - 1 is the target
    torch.Size([2, 5, 8])
    """
    V = vocab_size_of(base_model, vocab_size)
    mask_id = check_inputs(targets, answer_mask, attention_mask, row_ids, mask_id, V, config)
    B, L = targets.shape
    T = int(config.frames)
    dev = targets.device
    gold = targets.long()
    counters = torch.arange(B, device=dev) if row_ids is None else row_ids.to(dev)
    u = uniform_noise(seed, counters, 5 * L + 2)  # [B, 5L + 2]
    u_sel, u_wrong, u_tok, u_t1, u_t2 = u[:, : 5 * L].reshape(B, 5, L).unbind(1)  # each [B, L]
    u_cur, u_cnt = u[:, 5 * L], u[:, 5 * L + 1]  # [B]

    # 1. noisy positions: the n_b answer positions with the smallest selection noise
    n_ans = answer_mask.sum(1)  # [B]
    if config.corruption_count is None:
        n_noisy = torch.round(n_ans.double() * float(config.corruption_rate)).long()
    else:
        lo, hi = config.corruption_count
        n_noisy = lo + _randint(u_cnt, hi - lo + 1)
    n_noisy = torch.minimum(n_noisy, n_ans)
    order = torch.where(answer_mask, u_sel, 2.0).argsort(dim=1, stable=True)  # [B, L]
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(L, device=dev).expand(B, L))
    noisy = rank < n_noisy[:, None]
    wrong = noisy & (u_wrong < float(config.wrong_fraction))
    kind = torch.where(wrong, KIND_WRONG, torch.where(noisy, KIND_MASKED, KIND_CLEAN))  # [B, L]

    # 2. wrong tokens
    wrong_token = gold.clone()
    if bool(wrong.any()):
        if base_model is not None:
            state = torch.where(noisy, mask_id, gold)  # [B, L]
            wrong_token[wrong] = _wrong_from_model(base_model, state, gold, wrong, u_tok, mask_id, V, config)
        else:
            wrong_token[wrong] = _wrong_uniform(gold, wrong, u_tok, mask_id, V, config)

    return _event_frames(gold, kind, wrong_token, u_t1, u_t2, u_cur, T, mask_id)


def _event_frames(gold, kind, wrong_token, u_t1, u_t2, u_cur, T: int, mask_id: int) -> SynthTrajectory:
    """Step 3: the frames of each noisy position (``kind`` 1 masked, 2 wrong) and the current frame."""
    noisy, wrong = kind != KIND_CLEAN, kind == KIND_WRONG
    dev = gold.device
    # masked -> reveal at r in [1, T-1]; wrong -> M at a, gold at r, 1 <= a < r <= T-1
    x = _randint(u_t1, T - 1)  # [B, L] in [0, T-2]
    y = _randint(u_t2, T - 2)
    y = y + (y >= x).long()  # a second, distinct value in [0, T-2]
    mask_at = torch.where(wrong, torch.minimum(x, y) + 1, 0)
    reveal_at = torch.where(wrong, torch.maximum(x, y) + 1, torch.where(noisy, x + 1, 0))
    f = torch.arange(T, device=dev)[None, :, None]  # [1, T, 1]
    tok = torch.where(f < mask_at[:, None], wrong_token[:, None], mask_id)  # wrong before a, M after
    frames = torch.where(noisy[:, None] & (f < reveal_at[:, None]), tok, gold[:, None])  # [B, T, L]
    current = _randint(u_cur, T)  # [B]
    return SynthTrajectory(frames, kind, wrong_token, mask_at, reveal_at, current)


def trajectories_from_corruption(
    targets: torch.Tensor,  # [B, L]
    corrupted: torch.Tensor,  # [B, L]
    mask_id: int,
    config: SynthConfig,
    *,
    seed: int = 0,
    row_ids: torch.Tensor | None = None,  # [B]
) -> SynthTrajectory:
    """Trajectories from a given corruption instead of a drawn one (steps 3 of the module docstring).

    Parameters
    ----------
    targets : int tensor ``[B, L]``
        The gold sequences.
    corrupted : int tensor ``[B, L]``
        Frame 0: equal to ``targets`` on clean positions, ``mask_id`` on masked ones, any other id
        on wrong ones (e.g. an image of another class where a target differs from it).
    mask_id : int
    config : SynthConfig
        Only ``frames`` is used.
    seed, row_ids :
        As :func:`build_trajectories` (the same streams: a row's event frames depend on
        ``(seed, row_ids[b])`` only).

    Returns
    -------
    SynthTrajectory
        Every differing position is noisy: masked ones revealed at ``r``, wrong ones ``M`` at ``a``
        and gold at ``r`` (``1 <= a < r <= T - 1``).

    Example
    -------
    >>> gold = torch.tensor([[1, 2, 3, 4]]); source = torch.tensor([[1, 7, 20, 4]])  # 7 wrong, 20 = mask
    >>> traj = trajectories_from_corruption(gold, source, 20, SynthConfig(frames=6), seed=0)
    >>> traj.frames.shape, traj.frames[0, 0].tolist(), traj.frames[0, -1].tolist()
    (torch.Size([1, 6, 4]), [1, 7, 20, 4], [1, 2, 3, 4])
    """
    check_tensor("targets", targets, dtypes=INT_DTYPES, ndim=2)
    check_tensor("corrupted", corrupted, dtypes=INT_DTYPES, ndim=2)
    if corrupted.shape != targets.shape:
        raise ValueError(f"corrupted shape {tuple(corrupted.shape)} != targets shape {tuple(targets.shape)}")
    gold, src = targets.long(), corrupted.long()
    if bool((gold == mask_id).any()):
        raise ValueError(f"targets hold the mask id {mask_id} (gold must be a real token)")
    B, L = gold.shape
    T = int(config.frames)
    dev = gold.device
    counters = torch.arange(B, device=dev) if row_ids is None else row_ids.to(dev)
    u = uniform_noise(seed, counters, 5 * L + 2)  # [B, 5L + 2], the streams of build_trajectories
    _, _, _, u_t1, u_t2 = u[:, : 5 * L].reshape(B, 5, L).unbind(1)
    kind = torch.where(src == gold, KIND_CLEAN, torch.where(src == mask_id, KIND_MASKED, KIND_WRONG))
    wrong_token = torch.where(kind == KIND_WRONG, src, gold)
    return _event_frames(gold, kind, wrong_token, u_t1, u_t2, u[:, 5 * L], T, int(mask_id))


def make_batch(
    traj: SynthTrajectory,
    targets: torch.Tensor,  # [B, L]
    answer_mask: torch.Tensor,  # [B, L] bool
    mask_id: int,
    history_steps: int,
    attention_mask: torch.Tensor | None = None,
) -> RMBatch:
    """The current frame of each trajectory, its history and oracle labels (steps 4-5).

    Parameters
    ----------
    traj : SynthTrajectory
        From :func:`build_trajectories` on the same ``targets``.
    targets, answer_mask, mask_id, attention_mask
        As in :func:`synthesize`.
    history_steps : int
        History slots ``H`` of the batch.

    Returns
    -------
    RMBatch

    Example
    -------
    >>> targets = torch.randint(0, 20, (2, 8)); answer = torch.ones(2, 8, dtype=torch.bool)
    >>> traj = build_trajectories(targets, answer, None, 20, SynthConfig(), vocab_size=21)
    >>> make_batch(traj, targets, answer, 20, history_steps=3).history_ids.shape
    torch.Size([2, 3, 8])
    """
    frames, c = traj.frames, traj.current  # [B, T, L], [B]
    B, T, L = frames.shape
    H = int(history_steps)
    dev = frames.device
    rows = torch.arange(B, device=dev)
    cur = frames[rows, c]  # [B, L]
    gold = targets.long()

    # history: frames f < c whose next frame differs (the decoder pushes only on a change)
    changed = (frames[:, :-1] != frames[:, 1:]).any(2)  # [B, T-1]
    f = torch.arange(T - 1, device=dev)
    pushed = changed & (f[None, :] < c[:, None])  # [B, T-1]
    newest_first = torch.where(pushed, f, -1).sort(1, descending=True).values  # [B, T-1]
    slots = newest_first[:, :H]
    if slots.shape[1] < H:
        slots = torch.cat([slots, slots.new_full((B, H - slots.shape[1]), -1)], 1)
    history_len = pushed.sum(1).clamp(max=H)
    history_ids = frames[rows[:, None], slots.clamp(min=0)]  # [B, H, L]
    history_ids = torch.where(slots[:, :, None] >= 0, history_ids, mask_id)

    # oracle labels
    is_mask = cur == mask_id
    is_gold = cur == gold
    part = torch.where(is_mask, PART_REVEAL, torch.where(is_gold, PART_KEEP, PART_MASK))
    part = torch.where(answer_mask, part, PART_IGNORE)
    labels = torch.where(answer_mask & ~is_mask & ~is_gold, mask_id, gold)
    return RMBatch(
        input_ids=cur,
        labels=labels,
        part=part.long(),
        history_ids=history_ids,
        history_len=history_len.long(),
        token_mask=answer_mask.clone(),
        attention_mask=None if attention_mask is None else attention_mask.clone(),
    )


def synthesize(
    targets: torch.Tensor,  # [B, L]
    answer_mask: torch.Tensor,  # [B, L] bool
    base_model,
    mask_id: int,
    config: SynthConfig | None = None,
    *,
    seed: int = 0,
    row_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    vocab_size: int | None = None,
) -> RMBatch:
    """Synthesise one RM training batch from clean targets (docs/spec.md §4).

    Parameters
    ----------
    targets : int tensor ``[B, L]``
        Clean sequences (prompt + answer), ids in ``[0, V)``.
    answer_mask : bool tensor ``[B, L]``
        True on answer positions (the only ones corrupted and given a loss); every row needs one.
    base_model : module or None
        Frozen model ``model(input_ids=...) -> logits [B, L, V]`` that proposes plausible wrong
        tokens (one no-grad forward, in eval mode). None: wrong tokens uniform over ``wrong_ids``.
    mask_id : int
        The mask token id.
    config : SynthConfig
    seed : int
        Stream seed; with ``row_ids`` it fixes every random choice.
    row_ids : int tensor ``[B]``, optional
        Per-row RNG counters (default ``arange(B)``). Use each example's global index so a row
        synthesises identically whatever batch it is in.
    attention_mask : bool tensor ``[B, L]``, optional
        Padding mask, passed through to the batch; answer positions must be inside it.
    vocab_size : int, optional
        The data's vocabulary ``V``; required without a base model, checked against it otherwise.

    Returns
    -------
    RMBatch
        ``input_ids`` (the current frame), ``labels``, ``part``, ``history_ids`` / ``history_len``,
        ``token_mask`` (answer positions) and ``attention_mask``.

    Example
    -------
    >>> targets = torch.randint(0, 20, (4, 12))               # prompt (6) + answer (6), ids < V - 1
    >>> answer = torch.arange(12).expand(4, 12) >= 6
    >>> batch = synthesize(targets, answer, None, mask_id=20, vocab_size=21,
    ...                    config=SynthConfig(corruption_rate=0.5, history_steps=2))
    >>> batch.input_ids.shape, batch.history_ids.shape
    (torch.Size([4, 12]), torch.Size([4, 2, 12]))
    """
    config = config or SynthConfig()
    traj = build_trajectories(
        targets, answer_mask, base_model, mask_id, config,
        seed=seed, row_ids=row_ids, attention_mask=attention_mask, vocab_size=vocab_size,
    )
    return make_batch(traj, targets, answer_mask, int(mask_id), config.history_steps, attention_mask)
