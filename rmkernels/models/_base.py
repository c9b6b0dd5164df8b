"""The machinery shared by the native LLaDA and Dream models.

* :class:`MDMOutput` — what ``forward`` returns (``.logits``, ``.hidden``, ``.kv_cache``).
* :class:`KVCache` — per-layer keys and values (after RoPE), the primitive of the decoder's
  ``prefix`` and ``dual`` caches.
* :class:`NativeMDM` — the forward driver (embedding, blocks, final norm, LM head; the query span
  and the cache), weight initialisation, ``from_pretrained`` / ``save_pretrained`` in the released
  safetensors format.

KV-cache API
------------
A forward over the whole canvas with ``kv_cache=cache, cache_update=True`` stores, for every layer,
the keys and values of all ``L`` positions (``[B, Hkv, L, d]``, after RoPE). A later forward with
``q_span=(s, e)`` computes queries, keys and values only for positions ``s <= i < e``; attention at
every layer uses the *cached* keys/values outside ``[s, e)`` and the fresh ones inside, with the
``attention_mask`` over the whole length ``L``. The output covers the span only (``[B, e - s, V]``).
``cache_update=True`` on a span also writes the fresh span keys/values into the cache (in place);
``cache_update=False`` leaves the cache untouched.

* "prefix" cache: refresh with a full forward at the start of a block (``cache_update=True``); each
  step forwards ``q_span=(block_start, L)`` (the block and everything after it).
* "dual" cache: refresh likewise; each step forwards ``q_span=(block_start, block_end)``.
* Rows whose spans start at different positions (prompts of different lengths): ``q_index=[B, n]``,
  the per-row positions (a gather of the inputs and a scatter into the keys/values; with
  ``cache_update=True`` in place, so no copy of the cache). The decoder's cache modes use it
  (``rmkernels/decode/cache.py``, docs/spec.md §8).

When the cache is as fresh as the canvas (made from the same tokens), a span forward equals the
full forward's outputs on the span (up to float rounding); otherwise it is the cache approximation.

Example
-------
>>> from rmkernels.models import KVCache, LLaDAConfig, LLaDAModel
>>> model = LLaDAModel(LLaDAConfig(d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=64,
...                                vocab_size=50, embedding_size=64, mask_token_id=49)).eval()
>>> x = torch.randint(0, 50, (2, 12))
>>> cache = KVCache()
>>> full = model(x, kv_cache=cache, cache_update=True).logits  # [2, 12, 50]; cache filled
>>> part = model(x[:, 4:8], kv_cache=cache, q_span=(4, 8)).logits  # [2, 4, 50]
>>> torch.allclose(part, full[:, 4:8], atol=1e-5)
True

Models with ``logits_shift = 1`` (Dream) predict position ``i`` from the output at ``i - 1``: to get
the logits of positions ``[s, e)`` forward the span ``(s - 1, e)`` and drop its first row (for
``s = 0`` position 0 keeps its own output).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from rmkernels._utils import atomic_write
from rmkernels.models._layers import RMSNorm, apply_rope, attention, check_attn_impl, rope_cos_sin

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"


# ---------------------------------------------------------------------------------------------
@dataclass
class MDMOutput:
    """Output of a native model's ``forward``.

    logits : ``[B, Lq, vocab_size]`` (the head's padding rows dropped), or ``None`` with ``return_hidden``.
    hidden : ``[B, Lq, D]`` the final-normed hidden states (the LM head's input), with ``return_hidden``.
    kv_cache : the cache passed in (filled or updated when ``cache_update``), else ``None``.
    """

    logits: torch.Tensor | None
    hidden: torch.Tensor | None = None
    kv_cache: "KVCache | None" = None


@dataclass
class KVCache:
    """Keys and values of every layer, after RoPE: ``keys[l]``, ``values[l]`` of shape ``[B, Hkv, L, d]``.

    An empty cache (``KVCache()``) is filled by a full forward with ``cache_update=True``;
    :meth:`allocate` makes a zero-filled one of fixed shape (static addresses for CUDA graphs: a
    full forward then copies into it instead of replacing the tensors).
    """

    keys: list = field(default_factory=list)
    values: list = field(default_factory=list)

    @property
    def filled(self) -> bool:
        return bool(self.keys) and all(k is not None for k in self.keys)

    @property
    def length(self) -> int | None:
        """Cached sequence length ``L`` (``None`` when empty)."""
        return self.keys[0].shape[2] if self.filled else None

    @property
    def batch_size(self) -> int | None:
        return self.keys[0].shape[0] if self.filled else None

    @classmethod
    def allocate(cls, model: "NativeMDM", batch_size: int, length: int, *, dtype=None, device=None) -> "KVCache":
        """A zero cache shaped for ``model`` (``dtype`` / ``device`` default to the model's).

        Example
        -------
        >>> cache = KVCache.allocate(model, 2, 128)  # doctest: +SKIP
        """
        a = model.arch
        w = model.get_input_embeddings().weight
        dtype, device = dtype or w.dtype, device or w.device
        shape = (batch_size, a.n_kv_heads, length, a.head_dim)
        keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(a.n_layers)]
        values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(a.n_layers)]
        return cls(keys, values)

    def clone(self) -> "KVCache":
        return KVCache([k.clone() for k in self.keys], [v.clone() for v in self.values])

    def reset(self) -> None:
        """Drop the tensors (the next full forward with ``cache_update=True`` refills it)."""
        self.keys, self.values = [], []


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arch:
    """The shape facts the shared forward needs, in one vocabulary for both model families."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope_theta: float
    vocab_size: int
    embedding_size: int


class _Ctx:
    """Per-forward state handed to every block: rotary tables, key mask, span and cache."""

    def __init__(self, cos, sin, key_mask, span, total, cache, update, attn_impl, index=None):
        self.cos, self.sin, self.key_mask = cos, sin, key_mask
        self.span, self.total, self.cache, self.update, self.attn_impl = span, total, cache, update, attn_impl
        self.index = index  # [B, n] per-row query positions (q_index), or None

    def keys_values(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        cache = self.cache
        if cache is None:
            return k, v
        if self.index is not None:  # per-row positions: the fresh rows scattered over the cached ones
            ck, cv = cache.keys[layer], cache.values[layer]
            idx = self.index[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            if self.update:
                ck.scatter_(2, idx, k)
                cv.scatter_(2, idx, v)
                return ck, cv
            return ck.scatter(2, idx, k), cv.scatter(2, idx, v)
        s, e = self.span
        if (s, e) == (0, self.total):  # a full forward: store (or ignore) the cache
            if self.update:
                old = cache.keys[layer]
                if old is not None and old.shape == k.shape and old.dtype == k.dtype and old.device == k.device:
                    old.copy_(k)
                    cache.values[layer].copy_(v)
                else:
                    cache.keys[layer], cache.values[layer] = k.contiguous(), v.contiguous()
            return k, v
        ck, cv = cache.keys[layer], cache.values[layer]
        if self.update:
            ck[:, :, s:e].copy_(k)
            cv[:, :, s:e].copy_(v)
            return ck, cv
        return torch.cat([ck[:, :, :s], k, ck[:, :, e:]], 2), torch.cat([cv[:, :, :s], v, cv[:, :, e:]], 2)


def self_attention(h: torch.Tensor, q_proj: nn.Module, k_proj: nn.Module, v_proj: nn.Module, arch: Arch,
                   ctx: _Ctx, layer: int) -> torch.Tensor:
    """Multi-head attention of the normed hidden states ``h`` ``[B, Lq, D]``, before the output projection."""
    B, Lq, _ = h.shape
    d = arch.head_dim
    q = q_proj(h).view(B, Lq, arch.n_heads, d).transpose(1, 2)  # [B, Hq, Lq, d]
    k = k_proj(h).view(B, Lq, arch.n_kv_heads, d).transpose(1, 2)  # [B, Hkv, Lq, d]
    v = v_proj(h).view(B, Lq, arch.n_kv_heads, d).transpose(1, 2)
    q, k = apply_rope(q, ctx.cos, ctx.sin), apply_rope(k, ctx.cos, ctx.sin)
    k, v = ctx.keys_values(layer, k, v)
    a = attention(q, k, v, ctx.key_mask, ctx.attn_impl)  # [B, Hq, Lq, d]
    return a.transpose(1, 2).reshape(B, Lq, arch.n_heads * d)


# ---------------------------------------------------------------------------------------------
class ConfigBase:
    """``from_dict`` (unknown fields ignored), ``to_dict``, ``from_json`` for the config dataclasses."""

    model_type = ""
    architectures: tuple = ()
    _unsupported: dict = {}  # field -> predicate that a supported value satisfies

    @classmethod
    def from_dict(cls, d: dict):
        if not isinstance(d, dict):
            raise ValueError(f"a model config must be a JSON object, got {type(d).__name__}")
        for key, ok in cls._unsupported.items():
            if key in d and not ok(d[key]):
                raise ValueError(f"config field {key}={d[key]!r} is not supported by {cls.__name__}")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_json(cls, path: str):
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(model_type=self.model_type, architectures=list(self.architectures))
        return d

    @staticmethod
    def _need_int(obj, name: str, lo: int = 1) -> None:
        v = getattr(obj, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"config field {name} must be an int >= {lo}, got {v!r}")

    @staticmethod
    def _need_pos(obj, name: str) -> None:
        v = getattr(obj, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 and math.isfinite(v)):
            raise ValueError(f"config field {name} must be a positive number, got {v!r}")


def checkpoint_tensor_files(local_dir: str) -> dict[str, str]:
    """Map every tensor name of the safetensors checkpoint in ``local_dir`` to its file (strict).

    ``model.safetensors.index.json`` (sharded) takes precedence over ``model.safetensors``. A
    shard that is missing, a tensor listed in the index but absent from its shard, a tensor in a
    shard but not in the index, or a name held twice is a ``ValueError`` naming it.
    """
    from safetensors import safe_open

    index_path, single = os.path.join(local_dir, INDEX_FILE), os.path.join(local_dir, SINGLE_FILE)
    if os.path.isfile(index_path):
        try:
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index_path}: not a safetensors index with a weight_map ({e!r})") from None
        by_file: dict[str, set] = {}
        for name, fname in weight_map.items():
            by_file.setdefault(fname, set()).add(name)
        out = {}
        for fname, names in by_file.items():
            path = os.path.join(local_dir, fname)
            if os.path.basename(fname) != fname or not os.path.isfile(path):
                raise ValueError(f"{index_path} lists shard {fname!r} (for tensor {sorted(names)[0]!r}), "
                                 f"which does not exist in {local_dir}")
            with safe_open(path, framework="pt") as f:
                held = set(f.keys())
            for name in sorted(names - held):
                raise ValueError(f"tensor {name!r} is listed in {INDEX_FILE} for {fname} but absent from that file")
            for name in sorted(held - names):
                raise ValueError(f"unexpected tensor {name!r} in {fname}: not listed in {INDEX_FILE}")
            out.update({n: path for n in names})
        return out
    if os.path.isfile(single):
        with safe_open(single, framework="pt") as f:
            return {n: single for n in f.keys()}
    raise ValueError(f"{local_dir} holds neither {SINGLE_FILE} nor {INDEX_FILE} (nothing is downloaded: "
                     "pass a local directory with a released checkpoint)")


# ---------------------------------------------------------------------------------------------
class NativeMDM(nn.Module):
    """Base of :class:`~rmkernels.models.LLaDAModel` and :class:`~rmkernels.models.DreamModel`.

    Subclasses build their named modules in ``_build(config, device, dtype)`` (so parameter names
    are the released ones), and provide ``arch``, ``blocks``, ``final_norm``,
    ``get_input_embeddings`` and ``get_output_embeddings``.
    """

    config_class = ConfigBase
    logits_shift = 0

    def __init__(self, config, *, device=None, dtype=None, attn_impl: str = "auto"):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ValueError(f"config must be a {self.config_class.__name__}, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.attn_impl = attn_impl
        device = torch.device("cpu") if device is None else torch.device(device)
        self._build(config, device=torch.device("meta"), dtype=dtype)  # no memory, no init yet
        if device.type != "meta":
            self.to_empty(device=device)
            self.init_weights()

    # --- to be provided by subclasses ---------------------------------------------------------
    def _build(self, config, device, dtype) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def arch(self) -> Arch:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def blocks(self) -> nn.ModuleList:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def final_norm(self) -> RMSNorm:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------
    @property
    def attn_impl(self) -> str:
        return self._attn_impl

    @attn_impl.setter
    def attn_impl(self, value: str) -> None:
        self._attn_impl = check_attn_impl(value)

    @property
    def dtype(self) -> torch.dtype:
        return self.get_input_embeddings().weight.dtype

    @property
    def device(self) -> torch.device:
        return self.get_input_embeddings().weight.device

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Random init in place: linear weights and embeddings ~ N(0, std), biases 0, norm weights 1."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, std)
            elif isinstance(m, RMSNorm):
                m.reset_parameters()

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., vocab_size]`` from final-normed hidden states (padding rows of the head skipped)."""
        head = self.get_output_embeddings()
        V = self.arch.vocab_size
        bias = getattr(head, "bias", None)
        return F.linear(hidden, head.weight[:V], None if bias is None else bias[:V])

    # ------------------------------------------------------------------------------------------
    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, *, position_ids=None,
                kv_cache: KVCache | None = None, cache_update: bool = False, q_span=None, q_index=None,
                return_hidden: bool = False) -> MDMOutput:
        """Bidirectional forward, optionally over a span of positions against a KV cache.

        Parameters
        ----------
        input_ids : Tensor ``[B, n]`` int, optional
        inputs_embeds : Tensor ``[B, n, D]``, optional
            Token embeddings (e.g. History Reference's); exactly one of the two. ``n`` is the full
            length ``L`` or, with ``q_span=(s, e)``, either ``L`` (the span is sliced out) or ``e - s``.
        attention_mask : Tensor ``[B, L]`` bool / int, optional
            1 = a real token, 0 = padding (never attended). Always over the whole length.
        position_ids : Tensor ``[B, n]`` or ``[n]``, optional
            RoPE positions of the given inputs (default ``s, s + 1, ...``).
        kv_cache : KVCache, optional
            See the module docstring.
        cache_update : bool
            Store the fresh keys/values in ``kv_cache`` (a full forward fills it; a span forward
            writes the span).
        q_span : (int, int), optional
            Forward only positions ``[s, e)``; keys/values outside come from ``kv_cache``.
        q_index : Tensor ``[B, n]`` int64, optional
            Per-row query positions instead of one span (rows may start at different positions,
            e.g. the active blocks of prompts of different lengths): row ``b`` forwards positions
            ``q_index[b]``; keys/values at other positions come from ``kv_cache`` (which must be
            filled). The inputs are ``[B, n]`` (or ``[B, L]``, gathered), ``position_ids`` default
            to ``q_index``. A position may repeat within a row (padding to a common ``n``) only
            with the same input, so its fresh keys/values are identical. With ``cache_update`` the
            fresh keys/values are scattered into the cache in place (no copy of the cache);
            without, into a copy. No host synchronisation (CUDA-graph capturable).
        return_hidden : bool
            Return ``.hidden`` (final-normed, the LM head's input) and ``.logits = None``.

        Returns
        -------
        MDMOutput
        """
        a = self.arch
        emb = self.get_input_embeddings()
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = input_ids if inputs_embeds is None else inputs_embeds
        if inputs_embeds is not None and (x.dim() != 3 or x.shape[-1] != a.d_model):
            raise ValueError(f"inputs_embeds must be [B, L, {a.d_model}], got {tuple(x.shape)}")
        if input_ids is not None and (x.dim() != 2 or x.dtype.is_floating_point or x.dtype == torch.bool):
            raise ValueError(f"input_ids must be a 2-D integer tensor, got {x.dtype} {tuple(x.shape)}")
        B, n = x.shape[:2]
        if kv_cache is not None and not isinstance(kv_cache, KVCache):
            raise ValueError(f"kv_cache must be a KVCache, got {type(kv_cache).__name__}")
        if cache_update and kv_cache is None:
            raise ValueError("cache_update=True needs a kv_cache to write to")
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[0] != B:
                raise ValueError(f"attention_mask must be [B={B}, L], got {tuple(attention_mask.shape)}")
            if attention_mask.device != x.device:
                raise ValueError(f"attention_mask is on {attention_mask.device}, the inputs on {x.device}")
        cached = kv_cache is not None and kv_cache.filled
        if q_index is not None:
            return self._forward_rows(x, inputs_embeds is not None, attention_mask, position_ids, kv_cache,
                                      cache_update, q_span, q_index, return_hidden)

        # the total length L and the span [s, e)
        if attention_mask is not None:
            total = attention_mask.shape[1]
        elif cached:
            total = kv_cache.length
        else:
            total = n
        if q_span is None:
            s, e = 0, total
        else:
            if kv_cache is None:
                raise ValueError("q_span needs a kv_cache holding the keys and values outside the span")
            try:
                s, e = (int(q_span[0]), int(q_span[1])) if len(q_span) == 2 else (None, None)
            except (TypeError, ValueError):
                s = e = None
            if s is None or not 0 <= s < e <= total:
                raise ValueError(f"q_span must be (start, end) with 0 <= start < end <= L={total}, got {q_span!r}")
        full = (s, e) == (0, total)
        if n == total and not full:
            x = x[:, s:e]
            if position_ids is not None and position_ids.shape[-1] == n:
                position_ids = position_ids[..., s:e]
        elif n != e - s:
            raise ValueError(f"the inputs have length {n}; expected L={total} or the span length {e - s}")
        if not full and not cached:
            raise ValueError("kv_cache is empty: fill it with a full forward (cache_update=True) before a q_span forward")
        if cached and (kv_cache.length != total or kv_cache.batch_size != B or len(kv_cache.keys) != a.n_layers):
            raise ValueError(f"kv_cache holds {len(kv_cache.keys)} layers of batch {kv_cache.batch_size} and length "
                             f"{kv_cache.length}; this forward needs {a.n_layers} layers, batch {B}, length {total}")
        if kv_cache is not None and not cached and cache_update:
            kv_cache.keys, kv_cache.values = [None] * a.n_layers, [None] * a.n_layers
        if cached and not full and kv_cache.keys[0].dtype != emb.weight.dtype:
            raise ValueError(f"kv_cache dtype {kv_cache.keys[0].dtype} differs from the model's {emb.weight.dtype}")

        Lq = e - s
        if position_ids is None:
            position_ids = torch.arange(s, e, device=x.device)[None]
        else:
            if position_ids.dim() == 1:
                position_ids = position_ids[None]
            if position_ids.dim() != 2 or position_ids.shape[-1] != Lq or position_ids.shape[0] not in (1, B):
                raise ValueError(f"position_ids must be [B, {Lq}] or [{Lq}], got {tuple(position_ids.shape)}")
        cos, sin = rope_cos_sin(position_ids, a.head_dim, a.rope_theta)
        key_mask = None if attention_mask is None else attention_mask.bool()
        ctx = _Ctx(cos, sin, key_mask, (s, e), total, kv_cache, cache_update, self.attn_impl)
        return self._run(x, inputs_embeds is not None, ctx, kv_cache, return_hidden)

    def _run(self, x, embeds: bool, ctx: _Ctx, kv_cache, return_hidden: bool) -> MDMOutput:
        emb = self.get_input_embeddings()
        h = x.to(emb.weight.dtype) if embeds else emb(x)
        for i, block in enumerate(self.blocks):
            h = block(h, ctx, i)
        h = self.final_norm(h)
        if return_hidden:
            return MDMOutput(None, h, kv_cache)
        return MDMOutput(self.logits_from_hidden(h), None, kv_cache)

    def _forward_rows(self, x, embeds: bool, attention_mask, position_ids, kv_cache, cache_update, q_span, q_index,
                      return_hidden) -> MDMOutput:
        """``forward`` with per-row query positions ``q_index [B, n]`` against a filled cache."""
        a = self.arch
        B, n = x.shape[:2]
        if q_span is not None:
            raise ValueError("pass q_span (one span for the batch) or q_index (per-row positions), not both")
        if not isinstance(q_index, torch.Tensor) or q_index.dim() != 2 or q_index.dtype != torch.int64 \
                or q_index.shape[0] != B or q_index.shape[1] < 1:
            what = getattr(q_index, "dtype", type(q_index).__name__)
            raise ValueError(f"q_index must be an int64 tensor [B={B}, n >= 1], got {what} "
                             f"{tuple(getattr(q_index, 'shape', ()))}")
        if q_index.device != x.device:
            raise ValueError(f"q_index is on {q_index.device}, the inputs on {x.device}")
        total_ = kv_cache.length if kv_cache is not None and kv_cache.filled else None
        if not q_index.is_cuda and total_ is not None and bool(((q_index < 0) | (q_index >= total_)).any()):
            raise ValueError(f"q_index holds positions outside [0, {total_})")  # (checked on CPU: no sync there)
        if kv_cache is None or not kv_cache.filled:
            raise ValueError("q_index needs a filled kv_cache (a full forward with cache_update=True first)")
        total = kv_cache.length if attention_mask is None else attention_mask.shape[1]
        if kv_cache.length != total or kv_cache.batch_size != B or len(kv_cache.keys) != a.n_layers:
            raise ValueError(f"kv_cache holds {len(kv_cache.keys)} layers of batch {kv_cache.batch_size} and length "
                             f"{kv_cache.length}; this forward needs {a.n_layers} layers, batch {B}, length {total}")
        if kv_cache.keys[0].dtype != self.get_input_embeddings().weight.dtype:
            raise ValueError(f"kv_cache dtype {kv_cache.keys[0].dtype} differs from the model's "
                             f"{self.get_input_embeddings().weight.dtype}")
        nq = q_index.shape[1]
        if n == total and nq != total:
            x = x.gather(1, q_index) if not embeds else x.gather(1, q_index[:, :, None].expand(-1, -1, x.shape[2]))
            if position_ids is not None and position_ids.shape[-1] == n:
                position_ids = position_ids.expand(B, n).gather(1, q_index)
        elif n != nq:
            raise ValueError(f"the inputs have length {n}; expected L={total} or q_index's length {nq}")
        if position_ids is None:
            position_ids = q_index
        elif position_ids.dim() == 1:
            position_ids = position_ids[None]
        if position_ids.dim() != 2 or position_ids.shape[-1] != nq or position_ids.shape[0] not in (1, B):
            raise ValueError(f"position_ids must be [B, {nq}] or [{nq}], got {tuple(position_ids.shape)}")
        cos, sin = rope_cos_sin(position_ids, a.head_dim, a.rope_theta)
        key_mask = None if attention_mask is None else attention_mask.bool()
        ctx = _Ctx(cos, sin, key_mask, None, total, kv_cache, cache_update, self.attn_impl, index=q_index)
        return self._run(x, embeds, ctx, kv_cache, return_hidden)

    def allocate_kv_cache(self, batch_size: int, length: int, *, dtype=None, device=None) -> KVCache:
        """:meth:`KVCache.allocate` for this model (lets callers below the models layer make one).

        Example
        -------
        >>> cache = model.allocate_kv_cache(2, 128)  # doctest: +SKIP
        """
        return KVCache.allocate(self, batch_size, length, dtype=dtype, device=device)

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, local_dir: str, dtype: torch.dtype | None = None, device=None, attn_impl: str = "auto"):
        """Load a released checkpoint from a local directory (``config.json`` + safetensors); nothing downloads.

        The model is built on the meta device and every tensor is read, checked, converted to
        ``dtype`` and moved to ``device`` one at a time, so no full-precision host copy is made.

        Parameters
        ----------
        local_dir : str
            Holds ``config.json`` and ``model.safetensors`` or ``model.safetensors.index.json`` + shards.
        dtype : torch.dtype, optional
            Parameter dtype (default: the checkpoint's, taken from its first tensor).
        device : str or torch.device, optional
            Default CPU.
        attn_impl : {"auto", "flash", "sdpa", "eager"}

        Returns
        -------
        The model in eval mode.

        Raises
        ------
        ValueError
            A missing, unexpected or mis-shaped tensor (named), a missing file, a bad config.

        Example
        -------
        >>> model = LLaDAModel.from_pretrained("/models/LLaDA-8B-Instruct", dtype=torch.bfloat16,
        ...                                    device="cuda")  # doctest: +SKIP
        """
        from safetensors import safe_open

        if not os.path.isdir(local_dir):
            raise ValueError(f"local_dir {local_dir!r} is not a directory (nothing is downloaded)")
        cfg_path = os.path.join(local_dir, CONFIG_FILE)
        if not os.path.isfile(cfg_path):
            raise ValueError(f"{local_dir} holds no {CONFIG_FILE}")
        config = cls.config_class.from_json(cfg_path)
        device = torch.device("cpu") if device is None else torch.device(device)
        model = cls(config, device="meta", attn_impl=attn_impl)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        files = checkpoint_tensor_files(local_dir)
        missing = sorted(set(expected) - set(files))
        if missing:
            raise ValueError(f"checkpoint in {local_dir} is missing tensor {missing[0]!r}"
                             + (f" (and {len(missing) - 1} more: {missing[1:6]})" if len(missing) > 1 else ""))
        unexpected = sorted(set(files) - set(expected))
        if unexpected:
            raise ValueError(f"unexpected tensor {unexpected[0]!r} in the checkpoint in {local_dir} (not a parameter "
                             f"of {cls.__name__} with this config)"
                             + (f"; {len(unexpected) - 1} more: {unexpected[1:6]}" if len(unexpected) > 1 else ""))
        by_file: dict[str, list] = {}
        for name in expected:
            by_file.setdefault(files[name], []).append(name)
        for path, names in by_file.items():  # all shapes first: fail before reading any data
            with safe_open(path, framework="pt") as f:
                for name in names:
                    shape = tuple(f.get_slice(name).get_shape())
                    if shape != expected[name]:
                        raise ValueError(f"tensor {name!r} in {os.path.basename(path)} has shape {shape}; "
                                         f"the config needs {expected[name]}")
        state = {}
        for path, names in by_file.items():
            with safe_open(path, framework="pt") as f:
                for name in names:
                    t = f.get_tensor(name)
                    if not t.dtype.is_floating_point:
                        raise ValueError(f"tensor {name!r} has dtype {t.dtype}; parameters must be floating point")
                    dtype = dtype or t.dtype
                    state[name] = t.to(device=device, dtype=dtype)
                    del t
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()

    def save_pretrained(self, save_dir: str, *, max_shard_size: int | None = None) -> list[str]:
        """Write ``config.json`` and safetensors in the released layout, each file atomically.

        Parameters
        ----------
        save_dir : str
            Created if needed. A stale checkpoint of the other layout (single / sharded) is removed.
        max_shard_size : int, optional
            Bytes per shard: ``None`` writes one ``model.safetensors``; otherwise tensors fill
            ``model-0000i-of-0000n.safetensors`` in order (a tensor larger than the limit gets a
            shard of its own) and ``model.safetensors.index.json`` is written after them.

        Returns
        -------
        list of str
            The files written, config last.

        Example
        -------
        >>> model.save_pretrained("ckpt/tiny-llada", max_shard_size=1 << 20)  # doctest: +SKIP
        """
        from safetensors.torch import save_file

        if max_shard_size is not None and (isinstance(max_shard_size, bool) or not isinstance(max_shard_size, int)
                                           or max_shard_size < 1):
            raise ValueError(f"max_shard_size must be None or an int >= 1 (bytes), got {max_shard_size!r}")
        os.makedirs(save_dir, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        meta = {"format": "pt"}
        written = []
        index_path, single = os.path.join(save_dir, INDEX_FILE), os.path.join(save_dir, SINGLE_FILE)
        if max_shard_size is None:
            atomic_write(single, lambda tmp: save_file(state, tmp, metadata=meta))
            written.append(single)
            stale = [index_path]
        else:
            shards, cur, size = [], {}, 0
            for k, v in state.items():
                nbytes = v.numel() * v.element_size()
                if cur and size + nbytes > max_shard_size:
                    shards.append(cur)
                    cur, size = {}, 0
                cur[k] = v
                size += nbytes
            shards.append(cur)
            n = len(shards)
            weight_map = {}
            for i, shard in enumerate(shards):
                fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                path = os.path.join(save_dir, fname)
                atomic_write(path, lambda tmp, shard=shard: save_file(shard, tmp, metadata=meta))
                written.append(path)
                weight_map.update({k: fname for k in shard})
            total = sum(v.numel() * v.element_size() for v in state.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            atomic_write(index_path, lambda tmp: _write_json(tmp, index))
            written.append(index_path)
            stale = [single] + [os.path.join(save_dir, f) for f in os.listdir(save_dir)
                                if re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", f) and f not in set(weight_map.values())]
        cfg = self.config.to_dict()
        cfg["torch_dtype"] = str(self.dtype).replace("torch.", "")
        cfg_path = os.path.join(save_dir, CONFIG_FILE)
        atomic_write(cfg_path, lambda tmp: _write_json(tmp, cfg))
        written.append(cfg_path)
        for path in stale:  # the other layout would shadow or confuse a later load
            if os.path.exists(path):
                os.remove(path)
        return written


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
