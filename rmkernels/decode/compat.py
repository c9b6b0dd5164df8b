"""Drop-in replacements for other projects' decoding entry points.

:func:`llada_generate` has the signature and return value of the ``generate`` function published
with LLaDA (semi-autoregressive blocks, a linear per-block transfer schedule, ``low_confidence`` or
``random`` remasking, Gumbel noise, classifier-free guidance), written from the algorithm's
description, plus ``remasking="rm"`` (Reflective Masking through :func:`rmkernels.generate`) and a
KV cache (``cache=``, docs/spec.md §8).
"""
from __future__ import annotations

import math

import torch

from rmkernels._utils import FLOAT_DTYPES, INT_DTYPES, check_tensor
from rmkernels.decode.cache import CachedForward, plan_cache, refresh_due
from rmkernels.decode.canvas import Canvas
from rmkernels.decode.config import CACHE_MODES, DecodeConfig
from rmkernels.decode.forward import decoder_logits
from rmkernels.decode.generate import generate
from rmkernels.decode.model import as_rm_model

LLADA_MASK_ID = 126336
LLADA_EOS_ID = 126081
LLADA_EOT_ID = 126348
REMASKINGS = ("low_confidence", "random", "rm")


def _need_int(name: str, v, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    return v


def transfer_counts(n_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's linear schedule: ``[B, steps]`` tokens to unmask at each step of a block holding
    ``n_masked [B]`` masked positions: ``n // steps`` each, plus one on the first ``n % steps`` steps.

    Example
    -------
    >>> transfer_counts(torch.tensor([10, 3]), 4).tolist()
    [[3, 3, 2, 2], [1, 1, 1, 0]]
    """
    base, rem = n_masked // steps, n_masked % steps
    return base[:, None] + (torch.arange(steps, device=n_masked.device)[None, :] < rem[:, None]).long()


def add_gumbel_noise(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None):
    """LLaDA's sampling trick: ``exp(z) / (-log u) ** temperature`` in float64 (its argmax is a
    Gumbel-max sample of ``softmax(z / temperature)``); the logits themselves at temperature 0."""
    if temperature == 0:
        return logits
    z = logits.double()
    u = torch.rand(z.shape, dtype=torch.float64, device=z.device, generator=generator)
    return z.exp() / (-torch.log(u)) ** temperature


@torch.no_grad()
def llada_generate(model, prompt: torch.Tensor, attention_mask: torch.Tensor | None = None, steps: int = 128,
                   gen_length: int = 128, block_length: int = 128, temperature: float = 0.0, cfg_scale: float = 0.0,
                   remasking: str = "low_confidence", mask_id: int = LLADA_MASK_ID, logits_eos_inf: bool = False,
                   confidence_eos_eot_inf: bool = False, cache: str | None = None, *, eos_id: int = LLADA_EOS_ID,
                   eot_id: int = LLADA_EOT_ID, cache_refresh: int | None = None,
                   generator: torch.Generator | None = None, kernels: str = "auto", **rm_options) -> torch.Tensor:
    """LLaDA's ``generate``: semi-autoregressive masked diffusion sampling, as published.

    The canvas is ``[prompt, gen_length masks]``; the generation is split into blocks of
    ``block_length`` decoded left to right, each with ``steps / (gen_length / block_length)`` steps.
    At a block's start, the ``n`` masked positions of the block fix its schedule: step ``i`` unmasks
    ``n // steps_per_block`` positions, plus one for the first ``n % steps_per_block`` steps. Each
    step runs the model on the canvas (with guidance: also on the canvas with the prompt masked,
    ``logits = uncond + (cfg_scale + 1) (cond - uncond)``), sets the EOS logit to -inf
    (``logits_eos_inf``), takes the argmax of the (Gumbel-noised, ``temperature > 0``) logits as
    every position's candidate, and scores it: ``low_confidence``: its softmax probability (with
    ``confidence_eos_eot_inf``: a softmax where EOS and EOT are -inf); ``random``: a uniform draw.
    Among the masked positions up to the end of the current block, the highest scores (ties: lowest
    position) take their candidates. Unmasked tokens never change.

    Parameters
    ----------
    model : LLaDA-style model
        ``model(input_ids, attention_mask=...)`` returning logits or ``.logits`` (a Hugging Face
        ``trust_remote_code`` LLaDA, :class:`rmkernels.models.LLaDAModel`, ...). Dream-style shifted
        models are handled by the adapter (:class:`rmkernels.decode.RMModel`).
    prompt : Tensor ``[B, P]`` int
        Prompts, padded to one length as the caller likes (``attention_mask`` marks real tokens).
    attention_mask : Tensor ``[B, P]``, optional
        1 = real token; extended by ones over the generation.
    steps, gen_length, block_length : int
        ``gen_length`` a multiple of ``block_length``, ``steps`` a multiple of the block count.
    temperature : float
        0 = argmax; > 0 = Gumbel noise (LLaDA's float64 form, this function's own random draws).
    cfg_scale : float
        Unsupervised classifier-free guidance (0 = off).
    remasking : {"low_confidence", "random", "rm"}
        ``"rm"``: Reflective Masking through :func:`rmkernels.generate` (reveal
        ``ceil(block_length / steps_per_block)`` per step, re-mask ``p(mask) > p(token)``;
        ``logits_eos_inf`` suppresses EOS and ``confidence_eos_eot_inf`` suppresses EOS and EOT;
        ``rm_options`` are further :class:`DecodeConfig` fields, e.g. ``history_steps``).
    mask_id : int
        The mask token id (LLaDA: 126336).
    logits_eos_inf, confidence_eos_eot_inf : bool
        See above; ``eos_id`` (126081) and ``eot_id`` (126348) are LLaDA's ids.
    cache : {None, "none", "prefix", "dual"}
        KV cache (docs/spec.md §8; needs a model with the KV-cache API, e.g. ``LLaDAModel``): refresh at each
        block's start (and every ``cache_refresh`` steps), otherwise forward only the block
        (``dual``) or the block and what follows (``prefix``). With a cache only the current block's
        masked positions are candidates (earlier blocks' leftovers, if any, stay masked).
    generator : torch.Generator, optional
        For the Gumbel noise and ``random`` scores.
    kernels : str
        ``impl`` of the statistics / HER kernels of ``remasking="rm"`` (see :func:`rmkernels.generate`).

    Returns
    -------
    Tensor ``[B, P + gen_length]`` int64: the prompt as given, then the generation.

    Example
    -------
    >>> out = llada_generate(model, prompt_ids, steps=64, gen_length=64, block_length=32)  # doctest: +SKIP
    >>> answer = out[:, prompt_ids.shape[1]:]                                            # doctest: +SKIP
    """
    check_tensor("prompt", prompt, dtypes=INT_DTYPES, ndim=2)
    B, P = prompt.shape
    if attention_mask is not None:
        check_tensor("attention_mask", attention_mask, dtypes=(torch.bool,) + INT_DTYPES + FLOAT_DTYPES, ndim=2)
        if attention_mask.shape != prompt.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} must equal prompt shape "
                             f"{tuple(prompt.shape)}")
        if attention_mask.device != prompt.device:
            raise ValueError(f"attention_mask is on {attention_mask.device}, prompt on {prompt.device}")
    _need_int("steps", steps)
    _need_int("gen_length", gen_length)
    _need_int("block_length", block_length)
    if gen_length % block_length:
        raise ValueError(f"block_length={block_length} must divide gen_length={gen_length}")
    n_blocks = gen_length // block_length
    if steps % n_blocks:
        raise ValueError(f"steps={steps} must be a multiple of the number of blocks ({n_blocks})")
    spb = steps // n_blocks
    if not (isinstance(temperature, (int, float)) and 0 <= temperature < math.inf):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if not (isinstance(cfg_scale, (int, float)) and cfg_scale >= 0):
        raise ValueError(f"cfg_scale must be a number >= 0, got {cfg_scale!r}")
    if remasking not in REMASKINGS:
        raise ValueError(f"remasking must be one of {REMASKINGS}, got {remasking!r}")
    mode = "none" if cache is None else cache
    if mode not in CACHE_MODES:
        raise ValueError(f"cache must be None or one of {CACHE_MODES}, got {cache!r}")
    _need_int("mask_id", mask_id, lo=0)
    for name, v in (("eos_id", eos_id), ("eot_id", eot_id)):
        _need_int(name, v, lo=0)
    if rm_options and remasking != "rm":
        raise ValueError(f"unexpected arguments {sorted(rm_options)} (DecodeConfig fields apply to remasking='rm')")

    if remasking == "rm":
        suppress = ((eos_id,) if logits_eos_inf else ()) + ((eos_id, eot_id) if confidence_eos_eot_inf else ())
        opts = dict(history_steps=0, suppress_tokens=tuple(sorted(set(suppress))))
        opts.update(rm_options)
        cfg = DecodeConfig(steps=steps, block_size=block_length, reveal="topk",
                           reveal_per_step=-(-block_length // spb), temperature=float(temperature),
                           cfg_scale=float(cfg_scale), sampler="rm", cache=mode, cache_refresh=cache_refresh, **opts)
        out = generate(model, prompt, cfg, mask_id=mask_id, attention_mask=attention_mask, gen_length=gen_length,
                       kernels=kernels)
        return torch.cat([prompt.long(), out.sequences[out.gen_mask].view(B, gen_length)], 1)

    rm = as_rm_model(model)
    dev = prompt.device
    L = P + gen_length
    pos = torch.arange(L, device=dev)
    x = torch.full((B, L), mask_id, dtype=torch.int64, device=dev)
    x[:, :P] = prompt
    gen = (pos >= P)[None].expand(B, L)
    am = None
    if attention_mask is not None:
        am = torch.cat([attention_mask.bool(), torch.ones(B, gen_length, dtype=torch.bool, device=dev)], 1)
    cfg = DecodeConfig(steps=steps, block_size=block_length, history_steps=0, cfg_scale=float(cfg_scale),
                       cache=mode, cache_refresh=cache_refresh)
    canvas = Canvas(x, gen, am, torch.where(gen, pos - P, -1), torch.full((B,), n_blocks, device=dev), block_length,
                    torch.full((B,), spb, device=dev))
    plan = plan_cache(rm, canvas, cfg)
    cached = None if plan is None else CachedForward(rm, canvas, cfg, plan, mask_id, kernels, None)
    for k in range(n_blocks):
        end = P + (k + 1) * block_length
        counts = transfer_counts((x[:, end - block_length:end] == mask_id).sum(1), spb)  # [B, spb]
        if cached is not None:
            cached.set_block(k)
        for i in range(spb):
            if cached is None:
                logits, where = decoder_logits(rm, x, am, gen, None, cfg, mask_id), pos[None].expand(B, L)
            else:
                logits, where = cached.logits(x, None, refresh_due(i, cfg))
            _transfer(x, logits, where, end, counts[:, i], temperature, remasking, mask_id, logits_eos_inf,
                      confidence_eos_eot_inf, eos_id, eot_id, generator)
    return x


def _transfer(x, logits, where, end, k, temperature, remasking, mask_id, logits_eos_inf, confidence_eos_eot_inf,
              eos_id, eot_id, generator) -> None:
    """One step of LLaDA's sampler on the positions ``where [B, W]`` (logits ``[B, W, V]``), in place."""
    V = logits.shape[-1]
    if (logits_eos_inf or confidence_eos_eot_inf) and max(eos_id, eot_id if confidence_eos_eot_inf else 0) >= V:
        raise ValueError(f"eos_id={eos_id} / eot_id={eot_id} are outside the vocabulary (V={V})")
    if mask_id >= V:
        raise ValueError(f"mask_id={mask_id} is outside the model's vocabulary (V={V})")
    z = logits.float()
    if logits_eos_inf:
        z = z.index_fill(-1, torch.tensor([eos_id], device=z.device), float("-inf"))
    cand = add_gumbel_noise(z, temperature, generator).argmax(-1)  # [B, W]
    if remasking == "low_confidence":
        zc = z
        if confidence_eos_eot_inf:
            zc = z.index_fill(-1, torch.tensor([eos_id, eot_id], device=z.device), float("-inf"))
        score = torch.softmax(zc, -1).gather(-1, cand[..., None])[..., 0]
    else:  # "random"
        score = torch.rand(cand.shape, device=cand.device, generator=generator)
    cur = x.gather(1, where)
    score = torch.where((cur == mask_id) & (where < end), score, float("-inf"))
    order = torch.sort(score, dim=1, descending=True, stable=True).indices  # ties: lowest position
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=x.device).expand_as(order))
    take = (rank < k[:, None]) & (score > float("-inf"))
    x.scatter_(1, where, torch.where(take, cand, cur))


__all__ = ["LLADA_EOS_ID", "LLADA_EOT_ID", "LLADA_MASK_ID", "add_gumbel_noise", "llada_generate", "transfer_counts"]
