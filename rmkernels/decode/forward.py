"""One model evaluation of the decoder: HER input embeddings, the model, guidance, suppression."""
from __future__ import annotations

import torch

from rmkernels.decode.config import DecodeConfig
from rmkernels.decode.model import RMModel


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
    """
    B, L = x.shape
    x_in, att_in, g_in, hist_in = guidance_batch(x, attention_mask, gen_mask, history, cfg, mask_id)

    if hist_in is not None:
        embeds = rm.history_norm(
            rm.embedding_weight, x_in, hist_in[0], hist_in[1], g_in,
            decay=cfg.history_decay, rotate=cfg.history_rotate, check=False, impl=kernels,
        )
        logits = rm(inputs_embeds=embeds, attention_mask=att_in)
    else:
        logits = rm(input_ids=x_in, attention_mask=att_in)

    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(x_in.shape):
        raise ValueError(f"the model returned logits of shape {tuple(logits.shape)}; expected [B, L, V] with "
                         f"[B, L] = {tuple(x_in.shape)}")
    if mask_id >= logits.shape[-1]:
        raise ValueError(f"mask_id={mask_id} is outside the model's vocabulary (V={logits.shape[-1]})")
    return guide_and_suppress(logits, B, cfg, suppress_idx)


def guidance_batch(x, attention_mask, gen_mask, history, cfg: DecodeConfig, mask_id: int):
    """The model's batch: ``(x, attention_mask, gen_mask, history)`` as they are, or, with
    ``cfg_scale > 0`` (LLaDA's unsupervised guidance), doubled: the same canvas with the prompt masked
    appended (rows ``B..2B-1``)."""
    if cfg.cfg_scale <= 0:
        return x, attention_mask, gen_mask, history
    prompt = ~gen_mask if attention_mask is None else (~gen_mask & attention_mask)
    x_in = torch.cat([x, torch.where(prompt, mask_id, x)])
    att_in = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
    g_in = torch.cat([gen_mask, gen_mask])
    hist_in = None if history is None else (torch.cat([history[0], history[0]]), torch.cat([history[1], history[1]]))
    return x_in, att_in, g_in, hist_in


def guide_and_suppress(logits: torch.Tensor, B: int, cfg: DecodeConfig, suppress_idx=None) -> torch.Tensor:
    """Combine the guided halves of ``logits`` (``cfg_scale > 0``) and set ``suppress_tokens`` to -inf."""
    if cfg.cfg_scale > 0:
        cond, uncond = logits[:B], logits[B:]
        logits = uncond + (cfg.cfg_scale + 1.0) * (cond - uncond)
    if cfg.suppress_tokens:
        if max(cfg.suppress_tokens) >= logits.shape[-1]:
            raise ValueError(f"suppress_tokens holds ids outside the vocabulary (V={logits.shape[-1]})")
        if suppress_idx is None:
            suppress_idx = torch.tensor(cfg.suppress_tokens, device=logits.device)
        logits = logits.index_fill(-1, suppress_idx, float("-inf"))
    return logits


def check_suppress_tokens(cfg: DecodeConfig, mask_id: int) -> None:
    for t in cfg.suppress_tokens:
        if t < 0:
            raise ValueError(f"suppress_tokens holds a negative id {t}")
        if t == mask_id:
            raise ValueError("suppress_tokens must not contain mask_id (the mask's probability drives re-masking)")
