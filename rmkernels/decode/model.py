"""Model adapters: any mask diffusion model the decoder and trainer can call.

The decoder needs ``logits = f(input_ids=..., inputs_embeds=..., attention_mask=...)`` of shape
``[B, L, V]`` and, for History Reference, the input embedding table. :class:`RMModel` provides
both for

* plain callables ``fn(input_ids=None, inputs_embeds=None, attention_mask=None) -> logits``;
* ``nn.Module`` s with ``get_input_embeddings()`` (our :class:`~rmkernels.models.TinyMDM`);
* Hugging Face ``transformers`` models (``AutoModelForMaskedLM``, or LLaDA / Dream loaded with
  ``trust_remote_code``): outputs with ``.logits`` are unwrapped, and the embeddings keyword is
  found from the forward signature (``inputs_embeds``, or LLaDA's ``input_embeddings``).

Models whose logits for position ``i`` are the output at ``i - 1`` (Dream) declare it with an
attribute ``logits_shift = 1`` (:class:`~rmkernels.models.DreamModel` does; a Hugging Face Dream
object is recognised by ``config.model_type == "Dream"``): the adapter applies the shift, so the
decoder always sees per-position logits (position 0 keeps its own output).

The adapter also holds the HER LayerNorm (:class:`~rmkernels.history.HistoryNorm`, the only new
parameters), saved and loaded with safetensors.

Fused LM head (``generate(..., fused_head=True)``, docs/spec.md §9): the decoder then asks the adapter for
the LM head's input (:meth:`RMModel.hidden`) and its weight (:meth:`RMModel.lm_head`) instead of the
logits, and ``rm_linear_stats`` computes the statistics without writing them. Two kinds of model
can give hidden states:

* models whose forward takes ``return_hidden=True`` and then returns an object with ``.hidden``
  ``[B, L, D]`` (the final-normed states the head reads: the native LLaDA / Dream models); the
  head is ``model.get_output_embeddings()`` (``.weight [E, D]``, optional ``.bias``) and the
  vocabulary ``model.config.vocab_size`` (head rows beyond it are padding);
* any other ``nn.Module`` with ``get_output_embeddings()`` (Hugging Face models): for one call the
  output embedding's forward is replaced by a capturing identity, so the model runs up to the head
  and the head's input is kept. This assumes the model's logits are exactly ``head(hidden)`` (no
  soft-capping, scaling or slicing after the head; models whose config sets
  ``final_logit_softcapping`` are refused); the vocabulary is then the head's row count, as the
  logits have.

The logits shift is applied to hidden states exactly as to logits.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn as nn

from rmkernels.history import HistoryNorm

_EMBED_KWARGS = ("inputs_embeds", "input_embeddings")


def _forward_params(model) -> set[str] | None:
    fn = model.forward if isinstance(model, nn.Module) else model
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return None  # **kwargs: accepts anything
    return set(params)


class RMModel(nn.Module):
    """Adapter around a mask diffusion model, holding its HER LayerNorm.

    Parameters
    ----------
    model : nn.Module or callable
        The MDM. Called as ``model(input_ids=..., attention_mask=...)`` or with the embeddings
        keyword; its output is a logits tensor or has ``.logits``.
    history_norm : HistoryNorm, optional
        The HER LayerNorm. When ``None`` and the model exposes ``get_input_embeddings()``, a
        default one (weight 1, bias 0) is created on the embedding's device.
    logits_shift : {0, 1}, optional
        1: the model's output at ``i - 1`` is the prediction for position ``i``. Default: the
        model's ``logits_shift`` attribute, else 1 for a model whose ``config.model_type`` is
        ``"Dream"``, else 0.
    """

    def __init__(self, model, history_norm: HistoryNorm | None = None, logits_shift: int | None = None):
        super().__init__()
        if not callable(model):
            raise ValueError(f"model must be callable, got {type(model).__name__}")
        self.model = model
        if logits_shift is None:
            logits_shift = getattr(model, "logits_shift", None)
        if logits_shift is None:
            model_type = getattr(getattr(model, "config", None), "model_type", None)
            logits_shift = 1 if model_type == "Dream" else 0
        if logits_shift not in (0, 1) or isinstance(logits_shift, bool):
            raise ValueError(f"logits_shift must be 0 or 1, got {logits_shift!r}")
        self._logits_shift = int(logits_shift)
        get = getattr(model, "get_input_embeddings", None)
        self._embedding = get() if callable(get) else None
        params = _forward_params(model)
        self._embeds_kw = next((k for k in _EMBED_KWARGS if params is None or k in params), None)
        self._takes_mask = params is None or "attention_mask" in params
        self._returns_hidden = params is not None and "return_hidden" in params
        if history_norm is None and self._embedding is not None:
            w = self._embedding.weight
            history_norm = HistoryNorm(w.shape[1], device=w.device)
        self.history_norm = history_norm

    # ------------------------------------------------------------------------------------------
    @property
    def embedding_weight(self) -> torch.Tensor | None:
        """The input embedding table ``[V, D]`` (``None`` for models that do not expose it)."""
        return None if self._embedding is None else self._embedding.weight

    @property
    def logits_shift(self) -> int:
        """1 when the model's output at ``i - 1`` predicts position ``i`` (applied in :meth:`forward`), else 0."""
        return self._logits_shift

    @property
    def supports_history(self) -> bool:
        return self._embedding is not None and self._embeds_kw is not None and self.history_norm is not None

    @property
    def device(self) -> torch.device | None:
        w = self.embedding_weight
        if w is not None:
            return w.device
        if isinstance(self.model, nn.Module):
            p = next(self.model.parameters(), None)
            return None if p is None else p.device
        return None

    def _call_kwargs(self, input_ids=None, inputs_embeds=None, attention_mask=None) -> dict:
        kwargs = {}
        if inputs_embeds is not None:
            if self._embeds_kw is None:
                raise ValueError("this model's forward takes no inputs_embeds / input_embeddings argument")
            kwargs[self._embeds_kw] = inputs_embeds
        else:
            kwargs["input_ids"] = input_ids
        if attention_mask is not None:
            if not self._takes_mask:
                raise ValueError("the batch needs an attention_mask (padding) but the model's forward takes none")
            kwargs["attention_mask"] = attention_mask
        return kwargs

    def _shift(self, t: torch.Tensor) -> torch.Tensor:
        """Apply the logits shift along positions (dim 1) of logits or hidden states ``[B, L, ...]``."""
        if self._logits_shift and t.dim() == 3 and t.shape[1] > 1:
            t = torch.cat([t[:, :1], t[:, :-1]], dim=1)  # position i <- output at i - 1
        return t

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None) -> torch.Tensor:
        out = self.model(**self._call_kwargs(input_ids, inputs_embeds, attention_mask))
        if isinstance(out, torch.Tensor):
            return self._shift(out)
        logits = getattr(out, "logits", None)
        if logits is None and isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            logits = out[0]
        if not isinstance(logits, torch.Tensor):
            raise ValueError(f"the model returned {type(out).__name__}: expected a logits tensor or an output with .logits")
        return self._shift(logits)

    # ------------------------------------------------------------------------------------------
    def _output_embeddings(self):
        get = getattr(self.model, "get_output_embeddings", None)
        head = get() if callable(get) else None
        w = getattr(head, "weight", None)
        if not isinstance(head, nn.Module) or not isinstance(w, torch.Tensor) or w.dim() != 2:
            return None
        return head

    @property
    def supports_fused_head(self) -> bool:
        """True when :meth:`hidden` and :meth:`lm_head` can stand in for the logits (see the module doc)."""
        if self._output_embeddings() is None:
            return False
        cfg = getattr(self.model, "config", None)
        return getattr(cfg, "final_logit_softcapping", None) is None

    def lm_head(self) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """``(weight [E, D], bias [E] or None, vocab_size)`` of the model's LM head."""
        head = self._output_embeddings()
        if head is None or not self.supports_fused_head:
            raise ValueError("fused_head needs a model with get_output_embeddings() whose logits are exactly "
                             "head(hidden) (models with final_logit_softcapping are not)")
        w = head.weight
        b = getattr(head, "bias", None)
        b = b if isinstance(b, torch.Tensor) else None
        V = w.shape[0]
        if self._returns_hidden:
            v = getattr(getattr(self.model, "config", None), "vocab_size", None)
            if isinstance(v, int) and 0 < v <= w.shape[0]:
                V = v
        return w, b, V

    def hidden(self, input_ids=None, inputs_embeds=None, attention_mask=None) -> torch.Tensor:
        """The LM head's input ``[B, L, D]`` for these inputs (the logits shift applied)."""
        kwargs = self._call_kwargs(input_ids, inputs_embeds, attention_mask)
        if self._returns_hidden:
            out = self.model(**kwargs, return_hidden=True)
            h = getattr(out, "hidden", None)
            if not isinstance(h, torch.Tensor):
                raise ValueError(f"model(..., return_hidden=True) returned {type(out).__name__} without a .hidden tensor")
            return self._shift(h)
        head = self._output_embeddings()
        if head is None:
            raise ValueError("fused_head needs a model with get_output_embeddings()")
        captured = []

        def capture(x, *args, **kw):  # the head's input; the model goes on with it as "logits"
            captured.append(x)
            return x

        had = "forward" in head.__dict__
        saved = head.__dict__.get("forward")
        head.forward = capture
        try:
            self.model(**kwargs)
        finally:
            if had:
                head.forward = saved
            else:
                del head.forward
        if len(captured) != 1:
            raise ValueError(f"the model called its output embedding {len(captured)} times in one forward; "
                             "fused_head needs exactly one call")
        return self._shift(captured[0])

    # --- KV cache (models with the native KV-cache API, e.g. rmkernels.models.LLaDAModel) -------
    @property
    def supports_cache(self) -> bool:
        """True when the model has the KV-cache API the decoder's ``cache="prefix" | "dual"`` uses:
        ``forward(..., kv_cache=, cache_update=, q_index=, return_hidden=)``, ``logits_from_hidden``
        and ``allocate_kv_cache`` (see ``docs/models.md``)."""
        m = self.model
        params = _forward_params(m)
        return (callable(getattr(m, "allocate_kv_cache", None)) and callable(getattr(m, "logits_from_hidden", None))
                and params is not None and {"kv_cache", "cache_update", "q_index", "return_hidden"} <= params)

    def allocate_cache(self, batch_size: int, length: int):
        """A zero KV cache with fixed storage (static addresses, for CUDA graphs)."""
        return self.model.allocate_kv_cache(batch_size, length)

    def cached_hidden(self, input_ids=None, inputs_embeds=None, attention_mask=None, *, kv_cache,
                      q_index=None) -> torch.Tensor:
        """Final-normed hidden states ``[B, n, D]`` (raw positions: no logits shift), storing keys and
        values in ``kv_cache``: a full forward (``q_index=None``, the cache is refreshed) or a forward
        of the per-row positions ``q_index [B, n]`` against it (their keys/values written in place)."""
        kwargs = {"input_ids": input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
        out = self.model(**kwargs, attention_mask=attention_mask, kv_cache=kv_cache, cache_update=True,
                         q_index=q_index, return_hidden=True)
        return out.hidden

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's LM head on hidden states (no logits shift)."""
        return self.model.logits_from_hidden(hidden)

    # ------------------------------------------------------------------------------------------
    def save_history_norm(self, path: str, metadata: dict | None = None) -> None:
        if self.history_norm is None:
            raise ValueError("this adapter holds no HistoryNorm to save")
        self.history_norm.save(path, metadata)

    def load_history_norm(self, path: str) -> HistoryNorm:
        norm = HistoryNorm.load(path, device=self.device)
        if self._embedding is not None and norm.dim != self._embedding.weight.shape[1]:
            raise ValueError(f"history norm in {path} has dim {norm.dim}, the model's embeddings have "
                             f"{self._embedding.weight.shape[1]}")
        self.history_norm = norm
        return norm


def as_rm_model(model, history_norm: HistoryNorm | None = None) -> RMModel:
    """Wrap ``model`` in an :class:`RMModel` (an adapter is returned as is, with ``history_norm`` set if given).

    Parameters
    ----------
    model : nn.Module, callable or RMModel
        A mask diffusion model (Hugging Face models work as they are).
    history_norm : HistoryNorm, optional
        The trained HER LayerNorm.

    Returns
    -------
    RMModel

    Example
    -------
    >>> from rmkernels.models import TinyMDM
    >>> rm = as_rm_model(TinyMDM(vocab_size=10, max_len=8))
    >>> rm.supports_history                                    # it has input embeddings
    True
    """
    if isinstance(model, RMModel):
        if history_norm is not None:
            model.history_norm = history_norm
        return model
    return RMModel(model, history_norm)
