"""LLaDA: a bidirectional Llama-style mask diffusion transformer, with the released parameter names.

Architecture (from the published facts of LLaDA-8B): token embedding ``wte``; ``n_layers`` blocks of

    h = x + attn_out(MHA(attn_norm(x)))              # RMSNorm, RoPE (rotate-half), no causal mask
    x = h + ff_out(silu(ff_proj(ff_norm(h))) * up_proj(ff_norm(h)))

then the final RMSNorm ``ln_f`` and the LM head ``ff_out`` (or the embedding, ``weight_tying``).
Head dim ``d_model / n_heads``; K/V with ``n_kv_heads`` heads (grouped when fewer); every linear
layer has a bias when ``include_bias``. The embedding and head have ``embedding_size >= vocab_size``
rows; logits keep the first ``vocab_size``. ``logits_shift = 0``: position ``i``'s logits predict
position ``i``.

Parameter names (module naming gives them 1:1; ``{i}`` is the block):

=================================================  ===================================
``model.transformer.wte.weight``                   ``[embedding_size, d_model]``
``model.transformer.blocks.{i}.attn_norm.weight``  ``[d_model]``
``model.transformer.blocks.{i}.q_proj.weight``     ``[d_model, d_model]``
``model.transformer.blocks.{i}.k_proj.weight``     ``[n_kv_heads * head_dim, d_model]`` (``v_proj`` alike)
``model.transformer.blocks.{i}.attn_out.weight``   ``[d_model, d_model]``
``model.transformer.blocks.{i}.ff_norm.weight``    ``[d_model]``
``model.transformer.blocks.{i}.ff_proj.weight``    ``[mlp_hidden_size, d_model]`` (``up_proj`` alike)
``model.transformer.blocks.{i}.ff_out.weight``     ``[d_model, mlp_hidden_size]``
``model.transformer.ln_f.weight``                  ``[d_model]``
``model.transformer.ff_out.weight``                ``[embedding_size, d_model]`` (absent with ``weight_tying``)
=================================================  ===================================

plus ``.bias`` of every linear layer with ``include_bias``. The KV cache, attention backends and
checkpoint I/O are described in :mod:`rmkernels.models._base` and ``docs/models.md``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F

from rmkernels.models._base import Arch, ConfigBase, NativeMDM, self_attention
from rmkernels.models._layers import RMSNorm


@dataclass
class LLaDAConfig(ConfigBase):
    """LLaDA hyper-parameters, with the released ``config.json`` field names (defaults: LLaDA-8B).

    ``n_kv_heads = None`` means ``n_heads``; ``embedding_size = None`` means ``vocab_size``.
    Unknown ``config.json`` fields are ignored by :meth:`from_dict`; a few known ones with values
    this implementation does not support (``rope: false``, ALiBi, QK-norm, a non-Llama block, a
    non-RMS norm, logit scaling) raise ``ValueError``.

    Example
    -------
    >>> LLaDAConfig(d_model=64, n_heads=4, n_layers=2, mlp_hidden_size=128, vocab_size=100,
    ...             embedding_size=128, mask_token_id=99).head_dim
    16
    """

    d_model: int = 4096
    n_heads: int = 32
    n_kv_heads: int | None = 32
    n_layers: int = 32
    mlp_hidden_size: int = 12288
    vocab_size: int = 126464
    embedding_size: int | None = 126464
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    mask_token_id: int = 126336
    weight_tying: bool = False
    include_bias: bool = False
    max_sequence_length: int = 4096

    model_type = "llada"
    architectures = ("LLaDAModelLM",)
    _unsupported = {
        "rope": lambda v: v in (None, True),
        "alibi": lambda v: not v,
        "attention_layer_norm": lambda v: not v,
        "block_type": lambda v: v in (None, "llama"),
        "layer_norm_type": lambda v: v in (None, "rms"),
        "activation_type": lambda v: v in (None, "silu", "swiglu"),
        "scale_logits": lambda v: not v,
        "clip_qkv": lambda v: v is None,
    }

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.embedding_size is None:
            self.embedding_size = self.vocab_size
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def validate(self) -> "LLaDAConfig":
        for name in ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size", "vocab_size",
                     "embedding_size", "max_sequence_length"):
            self._need_int(self, name)
        self._need_int(self, "mask_token_id", lo=0)
        self._need_pos(self, "rope_theta")
        self._need_pos(self, "rms_norm_eps")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model={self.d_model} must split into n_heads={self.n_heads} heads of even size")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.embedding_size < self.vocab_size:
            raise ValueError(f"embedding_size={self.embedding_size} must be >= vocab_size={self.vocab_size}")
        if self.mask_token_id >= self.vocab_size:
            raise ValueError(f"mask_token_id={self.mask_token_id} must be < vocab_size={self.vocab_size}")
        return self


class LLaDABlock(nn.Module):
    """One LLaDA block (pre-norm attention + SwiGLU MLP); submodule names are the released ones."""

    def __init__(self, cfg: LLaDAConfig, arch: Arch, device=None, dtype=None):
        super().__init__()
        kw = dict(bias=cfg.include_bias, device=device, dtype=dtype)
        D, kv = cfg.d_model, cfg.n_kv_heads * cfg.head_dim
        self.arch = arch
        self.attn_norm = RMSNorm(D, cfg.rms_norm_eps, device=device, dtype=dtype)
        self.q_proj = nn.Linear(D, D, **kw)
        self.k_proj = nn.Linear(D, kv, **kw)
        self.v_proj = nn.Linear(D, kv, **kw)
        self.attn_out = nn.Linear(D, D, **kw)
        self.ff_norm = RMSNorm(D, cfg.rms_norm_eps, device=device, dtype=dtype)
        self.ff_proj = nn.Linear(D, cfg.mlp_hidden_size, **kw)
        self.up_proj = nn.Linear(D, cfg.mlp_hidden_size, **kw)
        self.ff_out = nn.Linear(cfg.mlp_hidden_size, D, **kw)

    def forward(self, x, ctx, layer: int):
        h = self.attn_norm(x)
        x = x + self.attn_out(self_attention(h, self.q_proj, self.k_proj, self.v_proj, self.arch, ctx, layer))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class _Transformer(nn.Module):  # model.transformer.{wte, blocks, ln_f, ff_out}
    def __init__(self, cfg: LLaDAConfig, arch: Arch, device=None, dtype=None):
        super().__init__()
        self.wte = nn.Embedding(cfg.embedding_size, cfg.d_model, device=device, dtype=dtype)
        self.blocks = nn.ModuleList(LLaDABlock(cfg, arch, device, dtype) for _ in range(cfg.n_layers))
        self.ln_f = RMSNorm(cfg.d_model, cfg.rms_norm_eps, device=device, dtype=dtype)
        if not cfg.weight_tying:
            self.ff_out = nn.Linear(cfg.d_model, cfg.embedding_size, bias=cfg.include_bias, device=device, dtype=dtype)


class _Wrapper(nn.Module):  # model.transformer
    def __init__(self, transformer: _Transformer):
        super().__init__()
        self.transformer = transformer


class LLaDAModel(NativeMDM):
    """LLaDA (see the module docstring), written from its architecture facts.

    Parameters
    ----------
    config : LLaDAConfig
    device, dtype : optional
        Where and in what dtype the parameters are created (random init ``N(0, 0.02)``, norms 1).
        ``device="meta"`` creates no storage (``from_pretrained`` assigns the loaded tensors).
    attn_impl : {"auto", "flash", "sdpa", "eager"}

    Example
    -------
    >>> cfg = LLaDAConfig(d_model=32, n_heads=4, n_layers=2, mlp_hidden_size=64, vocab_size=50, mask_token_id=49)
    >>> model = LLaDAModel(cfg).eval()
    >>> model(torch.randint(0, 50, (2, 7))).logits.shape
    torch.Size([2, 7, 50])
    """

    config_class = LLaDAConfig
    logits_shift = 0

    def _build(self, config: LLaDAConfig, device, dtype) -> None:
        self._arch = Arch(config.n_layers, config.d_model, config.n_heads, config.n_kv_heads, config.head_dim,
                          float(config.rope_theta), config.vocab_size, config.embedding_size)
        self.model = _Wrapper(_Transformer(config, self._arch, device, dtype))

    @property
    def arch(self) -> Arch:
        return self._arch

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.transformer.blocks

    @property
    def final_norm(self) -> RMSNorm:
        return self.model.transformer.ln_f

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer.wte

    def get_output_embeddings(self) -> nn.Module:
        """The LM head (``ff_out``, ``.weight [embedding_size, d_model]``), or ``wte`` when tied."""
        t = self.model.transformer
        return t.wte if self.config.weight_tying else t.ff_out
