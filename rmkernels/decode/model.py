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

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None) -> torch.Tensor:
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
        out = self.model(**kwargs)
        if isinstance(out, torch.Tensor):
            return out
        logits = getattr(out, "logits", None)
        if logits is None and isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            logits = out[0]
        if not isinstance(logits, torch.Tensor):
            raise ValueError(f"the model returned {type(out).__name__}: expected a logits tensor or an output with .logits")
        if self._logits_shift and logits.dim() == 3 and logits.shape[1] > 1:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # position i <- output at i - 1
        return logits

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
    """Wrap ``model`` in an :class:`RMModel` (an adapter is returned as is, with ``history_norm`` set if given)."""
    if isinstance(model, RMModel):
        if history_norm is not None:
            model.history_norm = history_norm
        return model
    return RMModel(model, history_norm)
