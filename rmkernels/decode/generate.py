"""``rmkernels.generate``: Reflective Masking decoding of a batch (docs/spec.md §2, §3)."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from rmkernels._utils import IMPLS
from rmkernels.decode.cache import plan_cache
from rmkernels.decode.canvas import Canvas, build_canvas
from rmkernels.decode.config import DecodeConfig
from rmkernels.decode.fast import FastDecoder
from rmkernels.decode.forward import check_suppress_tokens, decoder_stats
from rmkernels.decode.model import as_rm_model
from rmkernels.decode.reference import decode_row_reference
from rmkernels.history import HistoryNorm

DECODER_IMPLS = ("auto", "fast", "reference")  # the decoding loop; ``kernels`` picks the ops' kernels


@dataclass
class DecodeOutput:
    """Result of :func:`rmkernels.generate`.

    sequences : ``[B, L]`` int64, the final canvas (prompt, generated tokens, right padding).
    steps : ``[B]`` int64, steps each row took (model evaluations it used).
    nfe : int, model calls for the whole batch (batched calls; plus one if ``fill_remaining`` ran).
    gen_mask : ``[B, L]`` bool, the generated positions.
    trajectory : ``[T + 1, B, L]`` canvases after each step (entry 0 = start; finished rows repeat
        their final canvas), when ``record_trajectory`` is set.
    """

    sequences: torch.Tensor
    steps: torch.Tensor
    nfe: int
    gen_mask: torch.Tensor
    trajectory: torch.Tensor | None = None

    def generated(self, row: int) -> torch.Tensor:
        """The generated tokens of ``row``, in order."""
        return self.sequences[row][self.gen_mask[row]]


def _model_max_length(model) -> int | None:
    for obj in (model, getattr(model, "model", None)):
        cfg = getattr(obj, "config", None)
        for name in ("max_len", "max_position_embeddings", "max_sequence_length"):
            v = getattr(cfg, name, None)
            if isinstance(v, int) and v > 0:
                return v
    return None


def _fill_remaining(rm, canvas: Canvas, x, history, cfg, mask_id, kernels) -> bool:  # fast path
    """Fill still-masked generated positions with the best non-mask id; True if a forward ran."""
    left = canvas.gen_mask & (x == mask_id)
    if not bool(left.any()):
        return False
    best = decoder_stats(rm, x, canvas.attention_mask, canvas.gen_mask, history, cfg, mask_id, kernels,
                         check=True).best_id
    x.copy_(torch.where(left, best, x))
    return True


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    config: DecodeConfig | None = None,
    *,
    mask_id: int | None = None,
    attention_mask: torch.Tensor | None = None,
    gen_length: int | None = None,
    prompt_mask: torch.Tensor | None = None,
    history_norm: HistoryNorm | None = None,
    pad_id: int | None = None,
    max_length: int | None = None,
    impl: str = "auto",
    kernels: str = "auto",
    **overrides,
) -> DecodeOutput:
    """Decode a batch with Reflective Masking.

    Parameters
    ----------
    model : nn.Module, callable or RMModel
        ``model(input_ids=..., inputs_embeds=..., attention_mask=...) -> logits [B, L, V]`` (or an
        output with ``.logits``: Hugging Face models work as they are). History Reference needs
        ``get_input_embeddings()``.
    input_ids : Tensor ``[B, P]`` or ``[B, L]``
        With ``gen_length``: prompts (padding marked by ``attention_mask``), each extended by
        ``gen_length`` masks (padding moves to the right). Without: a ready canvas, e.g. a corrupted
        board to revise, whose positions outside ``prompt_mask`` are generated (editable); visible
        tokens there can be re-masked.
    config : DecodeConfig, optional
        The knobs; keyword ``overrides`` replace single fields (``generate(..., steps=32)``).
        ``cache="prefix" | "dual"`` (docs/spec.md §8) needs a model with the KV-cache API (the native
        ``LLaDAModel`` / ``DreamModel``) and prompts extended by ``gen_length`` (or a ready canvas
        whose rows each hold one contiguous run of generated positions of the same length).
    mask_id : int
        The mask token id (required).
    prompt_mask : Tensor ``[B, L]`` bool, optional
        Ready-canvas mode: True = fixed position.
    history_norm : HistoryNorm, optional
        Trained HER LayerNorm; default-initialised when omitted and ``history_steps > 0``.
    pad_id : int, optional
        Token placed in padding positions (default: ``mask_id``; padding is never attended).
    max_length : int, optional
        Canvas limit (default: the model's ``config.max_len`` / ``max_position_embeddings`` if any).
    impl : {"auto", "fast", "reference"}
        ``"reference"``: the readable per-row loop (the spec); ``"auto"``/``"fast"``: the
        device-resident batched loop.
    kernels : {"auto", "triton", "ext", "reference"}
        Implementation preference for the ops the fast path calls (``rm_stats`` or
        ``rm_linear_stats``, ``history_embed``): each runs that kernel where it has one for the
        tensors' device, and its ``"auto"`` choice otherwise (``rmkernels._utils.IMPL_TABLE``; e.g.
        ``"triton"`` gives ``history_embed`` its extension kernel). ``"reference"`` runs every op
        eagerly. The reference loop (``impl="reference"``) always uses the eager references.
    fused_head : bool (a ``DecodeConfig`` field, also a keyword override)
        Statistics from the LM head's input with ``rm_linear_stats`` (docs/spec.md §9): the
        ``[B, L, V]`` logits are never written. The reference loop then materialises the same
        float32 logits.

    Returns
    -------
    DecodeOutput
        ``sequences [B, L]``, ``steps [B]``, ``nfe``, ``gen_mask [B, L]``, ``trajectory`` (when
        ``record_trajectory``).

    Example
    -------
    >>> from rmkernels.models import TinyMDM
    >>> model = TinyMDM(vocab_size=32, max_len=24).eval()      # any MDM; HF models work as they are
    >>> prompts = torch.randint(0, 31, (2, 8))
    >>> out = generate(model, prompts, mask_id=31, gen_length=16, steps=16, history_steps=6)
    >>> out.sequences.shape, out.generated(0).shape
    (torch.Size([2, 24]), torch.Size([16]))
    """
    if impl not in DECODER_IMPLS:
        raise ValueError(f"impl must be one of {DECODER_IMPLS}, got {impl!r}")
    if kernels not in IMPLS:
        raise ValueError(f"kernels must be one of {list(IMPLS)}, got {kernels!r}")
    if mask_id is None:
        raise ValueError("mask_id is required: the model's mask token id")
    cfg = replace(config or DecodeConfig(), **overrides) if overrides else (config or DecodeConfig())
    cfg.validate()
    check_suppress_tokens(cfg, mask_id)
    rm = as_rm_model(model, history_norm)
    if cfg.history_steps > 0 and not rm.supports_history:
        raise ValueError("history_steps > 0 needs a model with get_input_embeddings() whose forward takes "
                         "inputs_embeds; pass history_steps=0 to decode without History Reference")
    if cfg.fused_head and not rm.supports_fused_head:
        raise ValueError("fused_head=True needs a model whose LM head the adapter can take over: get_output_embeddings() "
                         "with a 2-D weight, and logits exactly head(hidden) (see rmkernels.decode.model)")
    dev = rm.device
    if dev is not None and input_ids.device != dev:
        raise ValueError(f"input_ids is on {input_ids.device} but the model is on {dev}")
    w = rm.embedding_weight
    if w is not None and isinstance(mask_id, int) and not 0 <= mask_id < w.shape[0]:
        raise ValueError(f"mask_id={mask_id} is outside the model's vocabulary (V={w.shape[0]})")
    canvas = build_canvas(
        input_ids, mask_id, cfg, attention_mask=attention_mask, gen_length=gen_length, prompt_mask=prompt_mask,
        pad_id=pad_id, max_length=max_length if max_length is not None else _model_max_length(rm.model),
    )
    plan_cache(rm, canvas, cfg)  # cache="prefix" / "dual": the model and the layout can run it (docs/spec.md §8)
    seed = cfg.seed if cfg.seed is not None else (int(torch.randint(0, 2**62, (1,))) if cfg.temperature > 0 else 0)

    if impl == "reference":
        rows = [decode_row_reference(rm, canvas, b, cfg, mask_id, seed) for b in range(canvas.tokens.shape[0])]
        x = torch.stack([r[0] for r in rows]) if rows else canvas.tokens.clone()
        steps = torch.tensor([r[1] for r in rows], dtype=torch.int64, device=x.device)
        nfe = (int(steps.max()) if rows else 0) + int(any(r[3] for r in rows))  # as one batched loop would
        traj = None
        if cfg.record_trajectory:
            T = int(steps.max()) + 1 if rows else 1
            traj = torch.stack([torch.stack([r[2][min(t, len(r[2]) - 1)] for r in rows]) for t in range(T)])
        return DecodeOutput(x, steps, nfe, canvas.gen_mask, traj)

    dec = FastDecoder(rm, canvas, cfg, mask_id, seed, kernels)
    trajectory = [dec.x.clone()] if cfg.record_trajectory else None
    nfe = dec.run(trajectory)
    if trajectory is not None:  # rows stop changing once finished: keep the steps any row used
        trajectory = torch.stack(trajectory[: int(dec.steps.max()) + 1])
    if cfg.fill_remaining:
        hist = None if dec.history is None else (dec.history.ids, dec.history.lengths)
        nfe += int(_fill_remaining(rm, canvas, dec.x, hist, cfg, mask_id, kernels))
    return DecodeOutput(dec.x, dec.steps, nfe, canvas.gen_mask, trajectory)

