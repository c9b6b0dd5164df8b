"""The reference decoder: a short, readable loop that is the executable form of docs/spec.md §2, §3 and §10.

Each row is decoded on its own (a batch of one), with eager statistics and eager HER embeddings,
so its result cannot depend on the rest of the batch. The fast path must equal it token for token.
With a KV cache (docs/spec.md §8) the row's logits come from :class:`~rmkernels.decode.cache.RowCacheReference`:
a full forward at every refresh, the span against the cache otherwise; positions outside the span
have no statistics (they are not editable).
"""
from __future__ import annotations

import torch

from rmkernels.decode.cache import RowCacheReference, refresh_due
from rmkernels.decode.canvas import Canvas
from rmkernels.decode.config import COUNTER_STRIDE, DecodeConfig  # noqa: F401  (COUNTER_STRIDE re-exported)
from rmkernels.decode.forward import decoder_hidden, decoder_logits
from rmkernels.decode.model import RMModel
from rmkernels.decode.schedule import reveal_count
from rmkernels.reference.linear_stats import linear_logits_reference
from rmkernels.reference.rm_stats import rm_stats_reference


def decode_row_reference(rm: RMModel, canvas: Canvas, b: int, cfg: DecodeConfig, mask_id: int, seed: int):
    """Decode row ``b`` of ``canvas``.

    Returns ``(tokens [L], steps, trajectory, filled)``: the trajectory is the list of canvases
    (start, then after each step); ``filled`` tells whether the optional finish ran a forward pass.
    """
    x = canvas.tokens[b].clone()  # [L]
    L = x.shape[0]
    gen, rank = canvas.gen_mask[b], canvas.gen_rank[b]
    attn = None if canvas.attention_mask is None else canvas.attention_mask[b : b + 1]
    H = cfg.history_steps
    remask_count = torch.zeros(L, dtype=torch.int64)
    history: list[torch.Tensor] = []  # previous states, most recent first
    step = 0
    trajectory = [x.clone()]
    threshold = torch.tensor(cfg.reveal_threshold, dtype=torch.float32)  # compared in float32, as the fast path
    remask_threshold = torch.tensor(cfg.remask_threshold, dtype=torch.float32)
    rescue_ratio = None if cfg.rescue_ratio is None else torch.tensor(cfg.rescue_ratio, dtype=torch.float32)
    phase1_threshold = None if cfg.phase1_threshold is None else torch.tensor(cfg.phase1_threshold, dtype=torch.float32)

    def history_now():
        if H == 0:
            return None
        ids = torch.full((1, H, L), mask_id, dtype=torch.int64, device=x.device)
        for d, state in enumerate(history):
            ids[0, d] = state
        return ids, torch.tensor([len(history)], device=x.device)

    def logits_now():  # [L, V] for the current canvas and history
        if cfg.fused_head:  # the float32 logits of the LM head's input (docs/spec.md §9), materialised
            h, w, bias, V = decoder_hidden(rm, x[None], attn, gen[None], history_now(), cfg, mask_id, kernels="reference")
            return linear_logits_reference(h[0], w, bias, V, cfg.suppress_tokens)
        return decoder_logits(rm, x[None], attn, gen[None], history_now(), cfg, mask_id, kernels="reference")[0]

    cache = None
    if cfg.cache != "none":  # docs/spec.md §8: the row's generated positions are one run [first, first + n_gen)
        first = int(torch.arange(L)[gen.cpu()].min()) if bool(gen.any()) else 0
        cache = RowCacheReference(rm, cfg, mask_id, first, int(gen.sum()), canvas.block_len)

    def stats_now():
        logits = logits_now()
        counters = step * COUNTER_STRIDE + torch.arange(L, device=x.device)
        out = rm_stats_reference(logits, x, mask_id, temperature=cfg.temperature, seed=seed, offset=counters)
        if bool((out[-1] != 0).any()):
            raise ValueError(f"the model produced NaN or all -inf logits (row {b}, step {step})")
        return out

    # 0. two-phase editing, phase 1 (docs/spec.md §10): re-mask the visible generated tokens the model
    # doubts strongly (p(mask) > threshold and p(mask) > p(token)); nothing is revealed
    if phase1_threshold is not None and int(canvas.n_blocks[b]) > 0:
        for _ in range(cfg.phase1_steps):
            _, _, mask_p, cur_p, _, _, _ = stats_now()
            remasked = []
            for i in range(L):
                capped = cfg.max_remask >= 0 and remask_count[i] >= cfg.max_remask
                if gen[i] and x[i] != mask_id and not capped:
                    if mask_p[i] > phase1_threshold and mask_p[i] > cur_p[i]:
                        remasked.append(i)
            new_x = x.clone()
            for i in remasked:
                new_x[i] = mask_id
                remask_count[i] += 1
            step += 1
            if remasked and H > 0:
                history = [x.clone()] + history[: H - 1]
            x = new_x
            trajectory.append(x.clone())
            if not remasked:  # nothing left to re-mask: phase 2 starts
                break

    for block in range(int(canvas.n_blocks[b])):
        editable = gen & (rank < (block + 1) * canvas.block_len)  # G: generated positions up to this block's end
        if cfg.edit_scope == "block":  # only the active block
            editable &= rank >= block * canvas.block_len
        rescues = 0
        n_start = int((editable & (x == mask_id)).sum())  # masked when the block starts (schedule's n)
        T = cfg.schedule_steps or int(canvas.steps_per_block[b])
        for j in range(int(canvas.steps_per_block[b])):
            if cache is None:  # every position, from a full forward
                positions, logits = torch.arange(L, device=x.device), logits_now()
            else:  # the span (a refresh is a full forward that refills the cache)
                positions, logits = cache.logits(x, attn, gen, history_now(), block, refresh_due(j, cfg))
            counters = step * COUNTER_STRIDE + positions
            stats = rm_stats_reference(logits, x[positions], mask_id, temperature=cfg.temperature, seed=seed,
                                       offset=counters)
            if bool((stats[6] != 0).any()):
                raise ValueError(f"the model produced NaN or all -inf logits (row {b}, step {step})")
            # per position of the row (a cached span covers the active block, the only editable part)
            assert set(torch.arange(L)[editable.cpu()].tolist()) <= set(positions.tolist())
            top_id, top_p, mask_p, cur_p, best_id, best_p = (
                torch.zeros(L, dtype=v.dtype, device=x.device).index_copy(0, positions, v) for v in stats[:6])

            # 1. reveal: masked editable positions whose candidate is not the mask
            candidates = []  # (probability, position, token)
            for i in range(L):
                if editable[i] and x[i] == mask_id:
                    if not cfg.allow_mask_candidate:
                        candidates.append((best_p[i], i, best_id[i]))
                    elif top_id[i] != mask_id:  # argmax is the mask: abstain this step
                        candidates.append((top_p[i], i, top_id[i]))
            ranked = sorted(candidates, key=lambda c: (-float(c[0]), c[1]))  # ties: lowest position
            if cfg.schedule is not None:  # k from the schedule: the masked positions above its target
                masked_now = int((editable & (x == mask_id)).sum())
                revealed = ranked[: int(reveal_count(masked_now, n_start, j, T, cfg.schedule))]
            elif cfg.reveal == "topk":
                revealed = ranked[: cfg.reveal_per_step]
            elif cfg.reveal == "threshold":
                revealed = [c for c in ranked if c[0] >= threshold] or ranked[:1]
            else:  # "all"
                revealed = ranked

            # 2. reflective re-mask of visible editable tokens the model now doubts
            remasked, doubtful = [], []  # doubtful: the positions a stuck rescue would re-mask
            if cfg.remask_rule is not None and step % cfg.remask_interval == 0:
                for i in range(L):
                    capped = cfg.max_remask >= 0 and remask_count[i] >= cfg.max_remask
                    if editable[i] and x[i] != mask_id and not capped:
                        if cfg.remask_rule == "rm":
                            doubt = mask_p[i] > cur_p[i]
                            if rescue_ratio is not None and mask_p[i] > rescue_ratio * cur_p[i]:
                                doubtful.append(i)
                        else:  # "confidence": the token's own probability is low
                            doubt = cur_p[i] < remask_threshold
                        if doubt:
                            remasked.append(i)

            # 2b. stuck rescue: at a fixed point, re-mask the doubtful positions instead (at most
            # max_rescues times in a block)
            if not revealed and not remasked and doubtful and rescues < cfg.max_rescues:
                remasked = doubtful
                rescues += 1

            # 3. apply both, from the same forward pass
            new_x = x.clone()
            for _, i, token in revealed:
                new_x[i] = token
            for i in remasked:
                new_x[i] = mask_id
                remask_count[i] += 1
            step += 1
            changed = bool(revealed or remasked)
            if changed and H > 0:
                history = [x.clone()] + history[: H - 1]
            x = new_x
            trajectory.append(x.clone())
            if not changed:  # 4. fixed point: this block is done
                break

    # 5. optional finish: positions still masked take the best non-mask id
    filled = False
    if cfg.fill_remaining and bool((gen & (x == mask_id)).any()):
        best_id = rm_stats_reference(logits_now(), x, mask_id)[4]
        x = torch.where(gen & (x == mask_id), best_id, x)
        filled = True
    return x, step, trajectory, filled
