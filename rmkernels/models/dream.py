"""Dream: the Qwen2 architecture run bidirectionally, with the released parameter names.

Architecture (the published facts of Qwen2 / Dream-7B): token embedding ``embed_tokens``;
``num_hidden_layers`` decoder layers of

    h = x + o_proj(MHA(input_layernorm(x)))           # RMSNorm, RoPE (rotate-half), q/k/v with bias
    x = h + down_proj(silu(gate_proj(n)) * up_proj(n)),  n = post_attention_layernorm(h)

with no causal mask, then ``model.norm`` and ``lm_head`` (or the embedding when
``tie_word_embeddings``). Head dim ``hidden_size / num_attention_heads``; ``num_key_value_heads``
K/V heads. ``o_proj`` and the MLP have no bias.

Dream's output shift: the logits for position ``i`` are the model's output at position ``i - 1``
(position 0 keeps its own). :class:`DreamModel` does **not** apply it in ``forward`` (that returns
the raw per-position outputs); it declares ``logits_shift = 1`` and the decoder's model adapter
(:class:`rmkernels.decode.RMModel`) shifts.

Parameter names: ``model.embed_tokens.weight``, ``model.layers.{i}.input_layernorm.weight``,
``model.layers.{i}.self_attn.{q,k,v}_proj.{weight,bias}``, ``model.layers.{i}.self_attn.o_proj.weight``,
``model.layers.{i}.post_attention_layernorm.weight``, ``model.layers.{i}.mlp.{gate,up,down}_proj.weight``,
``model.norm.weight``, ``lm_head.weight`` (absent with ``tie_word_embeddings``). They are also the names
of Hugging Face ``Qwen2ForCausalLM``, which the tests use as an independent check (with a
non-causal 4-D mask).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F

from rmkernels.models._base import Arch, ConfigBase, NativeMDM, self_attention
from rmkernels.models._layers import RMSNorm


@dataclass
class DreamConfig(ConfigBase):
    """Dream / Qwen2 hyper-parameters with the released ``config.json`` names (defaults: Dream-7B).

    ``num_key_value_heads = None`` means ``num_attention_heads``. Unknown fields are ignored;
    ``rope_scaling``, sliding-window attention and activations other than SiLU raise ``ValueError``.

    Example
    -------
    >>> DreamConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    ...             num_key_value_heads=2, vocab_size=100, mask_token_id=99).head_dim
    16
    """

    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int | None = 4
    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    vocab_size: int = 152064
    mask_token_id: int = 151666
    max_position_embeddings: int = 131072
    tie_word_embeddings: bool = False

    model_type = "Dream"
    architectures = ("DreamModel",)
    _unsupported = {
        "rope_scaling": lambda v: v is None,
        "use_sliding_window": lambda v: not v,
        "hidden_act": lambda v: v in (None, "silu"),
    }

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def embedding_size(self) -> int:
        return self.vocab_size

    def validate(self) -> "DreamConfig":
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "vocab_size", "max_position_embeddings"):
            self._need_int(self, name)
        self._need_int(self, "mask_token_id", lo=0)
        self._need_pos(self, "rope_theta")
        self._need_pos(self, "rms_norm_eps")
        H = self.num_attention_heads
        if self.hidden_size % H or (self.hidden_size // H) % 2:
            raise ValueError(f"hidden_size={self.hidden_size} must split into num_attention_heads={H} heads of even size")
        if H % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={H} must be a multiple of num_key_value_heads={self.num_key_value_heads}")
        if self.mask_token_id >= self.vocab_size:
            raise ValueError(f"mask_token_id={self.mask_token_id} must be < vocab_size={self.vocab_size}")
        return self


class _Attention(nn.Module):  # self_attn.{q,k,v,o}_proj
    def __init__(self, cfg: DreamConfig, device=None, dtype=None):
        super().__init__()
        D, kv = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim
        self.q_proj = nn.Linear(D, D, bias=True, device=device, dtype=dtype)
        self.k_proj = nn.Linear(D, kv, bias=True, device=device, dtype=dtype)
        self.v_proj = nn.Linear(D, kv, bias=True, device=device, dtype=dtype)
        self.o_proj = nn.Linear(D, D, bias=False, device=device, dtype=dtype)


class _MLP(nn.Module):  # mlp.{gate,up,down}_proj
    def __init__(self, cfg: DreamConfig, device=None, dtype=None):
        super().__init__()
        D, F_ = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(D, F_, bias=False, device=device, dtype=dtype)
        self.up_proj = nn.Linear(D, F_, bias=False, device=device, dtype=dtype)
        self.down_proj = nn.Linear(F_, D, bias=False, device=device, dtype=dtype)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DreamLayer(nn.Module):
    """One Qwen2 decoder layer, run without a causal mask."""

    def __init__(self, cfg: DreamConfig, arch: Arch, device=None, dtype=None):
        super().__init__()
        self.arch = arch
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device=device, dtype=dtype)
        self.self_attn = _Attention(cfg, device, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device=device, dtype=dtype)
        self.mlp = _MLP(cfg, device, dtype)

    def forward(self, x, ctx, layer: int):
        a = self.self_attn
        h = self.input_layernorm(x)
        x = x + a.o_proj(self_attention(h, a.q_proj, a.k_proj, a.v_proj, self.arch, ctx, layer))
        return x + self.mlp(self.post_attention_layernorm(x))


class _Body(nn.Module):  # model.{embed_tokens, layers, norm}
    def __init__(self, cfg: DreamConfig, arch: Arch, device=None, dtype=None):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, device=device, dtype=dtype)
        self.layers = nn.ModuleList(DreamLayer(cfg, arch, device, dtype) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device=device, dtype=dtype)


class DreamModel(NativeMDM):
    """Dream (see the module docstring), written from the Qwen2 architecture facts.

    Parameters
    ----------
    config : DreamConfig
    device, dtype : optional
        Where and in what dtype the parameters are created (``"meta"``: no storage).
    attn_impl : {"auto", "flash", "sdpa", "eager"}

    Example
    -------
    >>> cfg = DreamConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    ...                   num_key_value_heads=2, vocab_size=50, mask_token_id=49)
    >>> out = DreamModel(cfg).eval()(torch.randint(0, 50, (2, 7)))
    >>> out.logits.shape  # unshifted; RMModel applies logits_shift = 1
    torch.Size([2, 7, 50])
    """

    config_class = DreamConfig
    logits_shift = 1

    def _build(self, config: DreamConfig, device, dtype) -> None:
        self._arch = Arch(config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
                          config.num_key_value_heads, config.head_dim, float(config.rope_theta), config.vocab_size,
                          config.vocab_size)
        self.model = _Body(config, self._arch, device, dtype)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False, device=device, dtype=dtype)

    @property
    def arch(self) -> Arch:
        return self._arch

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    @property
    def final_norm(self) -> RMSNorm:
        return self.model.norm

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        """``lm_head`` (``.weight [vocab_size, hidden_size]``), or ``embed_tokens`` when tied."""
        return self.model.embed_tokens if self.config.tie_word_embeddings else self.lm_head
