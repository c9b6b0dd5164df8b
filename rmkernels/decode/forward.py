"""One model evaluation of the decoder: HER input embeddings, the model, guidance, suppression."""
from __future__ import annotations

import torch

from rmkernels._utils import resolve_impl
from rmkernels.decode.config import DecodeConfig
from rmkernels.decode.model import RMModel


def _model_inputs(x, attention_mask, gen_mask, history, cfg: DecodeConfig, mask_id: int):
    """The batch the model sees: with guidance the canvas is followed by its unconditional copy."""
    if cfg.cfg_scale > 0:  # LLaDA's unsupervised guidance: the same canvas with the prompt masked
        prompt = ~gen_mask if attention_mask is None else (~gen_mask & attention_mask)
        x_in = torch.cat([x, torch.where(prompt, mask_id, x)])
        att_in = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
        g_in = torch.cat([gen_mask, gen_mask])
        hist_in = None if history is None else (torch.cat([history[0], history[0]]), torch.cat([history[1], history[1]]))
        return x_in, att_in, g_in, hist_in
    return x, attention_mask, gen_mask, history


guidance_batch = _model_inputs  # public name (the KV-cache path, rmkernels/decode/cache.py)


def _run_model(rm: RMModel, fn, x_in, att_in, g_in, hist_in, cfg: DecodeConfig, kernels: str):
    """``fn`` (the adapter's forward or its ``hidden``) on the canvas, with HER embeddings if any."""
    if hist_in is not None:
        embeds = rm.history_norm(
            rm.embedding_weight, x_in, hist_in[0], hist_in[1], g_in,
            decay=cfg.history_decay, rotate=cfg.history_rotate, check=False,
            impl=resolve_impl("history_embed", kernels, x_in.device, fallback=True),
        )
        return fn(inputs_embeds=embeds, attention_mask=att_in)
    return fn(input_ids=x_in, attention_mask=att_in)


def guide(out: torch.Tensor, B: int, cfg: DecodeConfig) -> torch.Tensor:
    """``uncond + (s + 1) (cond - uncond)`` over the two halves of the batch (logits or hidden states:
    the LM head is affine, so mixing hidden states mixes the logits, the bias counted once)."""
    if cfg.cfg_scale > 0:
        cond, uncond = out[:B], out[B:]
        return uncond + (cfg.cfg_scale + 1.0) * (cond - uncond)
    return out


def decoder_logits(
    rm: RMModel,
    x: torch.Tensor,  # [B, L] current canvas
    attention_mask: torch.Tensor | None,  # [B, L] bool
    gen_mask: torch.Tensor,  # [B, L] bool, HER's g (and the non-prompt positions for guidance)
    history,  # (ids [B, H, L], lengths [B]) or None
    cfg: DecodeConfig,
    mask_id: int,
    kernels: str = "auto",
    suppress_idx: torch.Tensor | None = None,
) -> torch.Tensor:  # [B, L, V]
    """Logits for the canvas ``x`` (shape-checked, so a wrong model output fails here).

    ``suppress_idx``: ``cfg.suppress_tokens`` as a device tensor, made once by the caller (creating
    it here would copy from the host inside every step, which a CUDA graph cannot capture).
    ``kernels``: the decoder's implementation preference; ``history_embed`` runs it where it has
    that kernel on this device, else its ``"auto"`` choice (:func:`rmkernels._utils.resolve_impl`).
    """
    B, L = x.shape
    x_in, att_in, g_in, hist_in = _model_inputs(x, attention_mask, gen_mask, history, cfg, mask_id)
    logits = _run_model(rm, rm, x_in, att_in, g_in, hist_in, cfg, kernels)

    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(x_in.shape):
        raise ValueError(f"the model returned logits of shape {tuple(logits.shape)}; expected [B, L, V] with "
                         f"[B, L] = {tuple(x_in.shape)}")
    if mask_id >= logits.shape[-1]:
        raise ValueError(f"mask_id={mask_id} is outside the model's vocabulary (V={logits.shape[-1]})")
    return guide_and_suppress(logits, B, cfg, suppress_idx)


def guide_and_suppress(logits: torch.Tensor, B: int, cfg: DecodeConfig, suppress_idx=None) -> torch.Tensor:
    """Combine the guided halves of ``logits`` (``cfg_scale > 0``) and set ``suppress_tokens`` to -inf
    (``suppress_idx``: the ids as a device tensor made once by the caller, for CUDA graphs)."""
    logits = guide(logits, B, cfg)
    if cfg.suppress_tokens:
        if max(cfg.suppress_tokens) >= logits.shape[-1]:
            raise ValueError(f"suppress_tokens holds ids outside the vocabulary (V={logits.shape[-1]})")
        if suppress_idx is None:
            suppress_idx = torch.tensor(cfg.suppress_tokens, device=logits.device)
        logits = logits.index_fill(-1, suppress_idx, float("-inf"))
    return logits


def decoder_hidden(
    rm: RMModel,
    x: torch.Tensor,  # [B, L]
    attention_mask: torch.Tensor | None,
    gen_mask: torch.Tensor,
    history,
    cfg: DecodeConfig,
    mask_id: int,
    kernels: str = "auto",
):
    """The fused-head counterpart of :func:`decoder_logits` (docs/spec.md §9): ``(hidden [B, L, D], weight
    [E, D], bias [E] or None, vocab_size)`` such that ``decoder_logits`` equals
    ``(hidden @ weight[:vocab_size].T + bias[:vocab_size])`` with ``cfg.suppress_tokens`` at -inf.
    Guidance mixes the two hidden rows; the hidden states are cast to the head's dtype."""
    B, L = x.shape
    weight, bias, V = rm.lm_head()
    x_in, att_in, g_in, hist_in = _model_inputs(x, attention_mask, gen_mask, history, cfg, mask_id)
    h = _run_model(rm, rm.hidden, x_in, att_in, g_in, hist_in, cfg, kernels)
    if h.dim() != 3 or tuple(h.shape[:2]) != tuple(x_in.shape) or h.shape[-1] != weight.shape[1]:
        raise ValueError(f"the model's hidden states have shape {tuple(h.shape)}; expected [B, L, D] with "
                         f"[B, L] = {tuple(x_in.shape)} and D = {weight.shape[1]} (the LM head's input size)")
    if mask_id >= V:
        raise ValueError(f"mask_id={mask_id} is outside the model's vocabulary (V={V})")
    if cfg.suppress_tokens and max(cfg.suppress_tokens) >= V:
        raise ValueError(f"suppress_tokens holds ids outside the vocabulary (V={V})")
    return guide(h, B, cfg).to(weight.dtype), weight, bias, V


def decoder_stats(
    rm: RMModel,
    x: torch.Tensor,
    attention_mask: torch.Tensor | None,
    gen_mask: torch.Tensor,
    history,
    cfg: DecodeConfig,
    mask_id: int,
    kernels: str = "auto",
    suppress_idx: torch.Tensor | None = None,
    *,
    temperature: float = 0.0,
    seed: int = 0,
    offset=0,
    check: bool = False,
):
    """:class:`~rmkernels.RMStats` of the canvas: ``rm_stats`` of :func:`decoder_logits`, or with
    ``cfg.fused_head`` ``rm_linear_stats`` of :func:`decoder_hidden` (no ``[B, L, V]`` logits)."""
    if cfg.fused_head:
        from rmkernels.ops.linear_stats import rm_linear_stats

        impl = resolve_impl("rm_linear_stats", kernels, x.device, fallback=True)
        if impl == "reference" and kernels != "reference":
            impl = "auto"  # the op's own auto keeps the logits chunked where no kernel runs
        h, w, b, V = decoder_hidden(rm, x, attention_mask, gen_mask, history, cfg, mask_id, kernels)
        sup = cfg.suppress_tokens if suppress_idx is None else suppress_idx
        return rm_linear_stats(h, w, x, mask_id, lm_bias=b, vocab_size=V, temperature=temperature, seed=seed,
                               offset=offset, suppress_tokens=sup, check=check, impl=impl)
    from rmkernels.ops.rm_stats import rm_stats

    logits = decoder_logits(rm, x, attention_mask, gen_mask, history, cfg, mask_id, kernels, suppress_idx)
    return rm_stats(logits, x, mask_id, temperature=temperature, seed=seed, offset=offset, check=check,
                    impl=resolve_impl("rm_stats", kernels, x.device, fallback=True))


def check_suppress_tokens(cfg: DecodeConfig, mask_id: int) -> None:
    for t in cfg.suppress_tokens:
        if t < 0:
            raise ValueError(f"suppress_tokens holds a negative id {t}")
        if t == mask_id:
            raise ValueError("suppress_tokens must not contain mask_id (the mask's probability drives re-masking)")
