"""A tiny bidirectional transformer for mask diffusion (Sudoku, tests, benchmarks).

Interface shared with every model the decoder and trainer take:
``model(input_ids=None, inputs_embeds=None, attention_mask=None) -> logits [B, L, V]`` and
``model.get_input_embeddings() -> nn.Embedding``. ``inputs_embeds`` are token embeddings only:
positional embeddings are added inside, so History Reference residuals sit on the token embedding.

``grid=n`` (e.g. 9 for Sudoku; ``max_len`` must be ``n * n``) swaps the free positional table for the
board's structure: position ``(r, c)`` is ``row[r] + col[c] + box[b]`` (``b`` the ``sqrt(n)`` box),
and each attention head adds a learned bias per relation of the two cells (same cell, same row,
same column, same box, none). Both are ordinary parameters; nothing about the rules is hard-coded.

``image=n`` (e.g. 8 for the 8 x 8 digits; ``max_len`` must be ``n * n + 1``) lays the sequence out as
one condition slot (position 0: a class token) followed by an ``n x n`` image in row-major order:
pixel ``(r, c)`` gets ``row[r] + col[c]``, the slot its own embedding, and each attention head adds
a learned bias per 2-D offset ``(dr, dc)`` of two pixels (``(2n - 1)^2`` of them) and per
slot-pixel, pixel-slot and slot-slot pair.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class TinyMDMConfig:
    vocab_size: int = 11
    max_len: int = 81
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    grid: int = 0  # 0: a plain sequence; n: an n x n board (positions factorised, relation bias)
    image: int = 0  # 0: off; n: a condition slot + an n x n image (2-D positions, offset bias)

    def to_dict(self):
        return asdict(self)


class _Block(nn.Module):
    def __init__(self, cfg: TinyMDMConfig):
        super().__init__()
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.dim, cfg.mlp_ratio * cfg.dim), nn.GELU(), nn.Linear(cfg.mlp_ratio * cfg.dim, cfg.dim)
        )
        self.dropout = cfg.dropout

    def forward(self, h: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:  # bias [B|1, h|1, L, L]
        B, L, D = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        drop = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=drop)  # [B, h, L, d]
        h = h + self.proj(a.transpose(1, 2).reshape(B, L, D))
        return h + self.mlp(self.norm2(h))


class TinyMDM(nn.Module):
    def __init__(self, cfg: TinyMDMConfig | None = None, **kwargs):
        super().__init__()
        cfg = cfg or TinyMDMConfig(**kwargs)
        if cfg.dim % cfg.heads:
            raise ValueError(f"dim={cfg.dim} must be divisible by heads={cfg.heads}")
        self.config = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.dim)
        if cfg.grid and cfg.image:
            raise ValueError("grid and image are exclusive layouts")
        if cfg.image:
            n = cfg.image
            if n < 1 or n * n + 1 != cfg.max_len:
                raise ValueError(f"image={n} needs max_len == image**2 + 1 (slot + pixels), got max_len={cfg.max_len}")
            p = torch.arange(n * n)
            r, c = p // n, p % n
            K = (2 * n - 1) ** 2  # pixel-pixel offsets; K, K + 1, K + 2: slot-pixel, pixel-slot, slot-slot
            rel = torch.empty(n * n + 1, n * n + 1, dtype=torch.long)
            rel[1:, 1:] = (r[:, None] - r[None, :] + n - 1) * (2 * n - 1) + (c[:, None] - c[None, :] + n - 1)
            rel[0, 1:], rel[1:, 0], rel[0, 0] = K, K + 1, K + 2
            self.register_buffer("_rel", rel, persistent=False)  # [L, L]
            self.register_buffer("_rc", torch.stack([r, c]), persistent=False)  # [2, n*n]
            self.pos_slot = nn.Parameter(torch.zeros(1, cfg.dim))
            self.pos_rc = nn.Parameter(torch.zeros(2, n, cfg.dim))
            self.rel_bias = nn.Parameter(torch.zeros(cfg.depth, cfg.heads, K + 3))
            nn.init.normal_(self.pos_slot, std=0.02)
            nn.init.normal_(self.pos_rc, std=0.02)
        elif cfg.grid:
            n, box = cfg.grid, math.isqrt(cfg.grid)
            if n * n != cfg.max_len or box * box != n:
                raise ValueError(f"grid={n} needs max_len == grid**2 and a square grid, got max_len={cfg.max_len}")
            r, c = torch.arange(n * n) // n, torch.arange(n * n) % n
            b = (r // box) * box + c // box
            self.register_buffer("_rcb", torch.stack([r, c, b]), persistent=False)  # [3, L]
            same = [(k[:, None] == k[None, :]) for k in (r, c, b)]  # [L, L] each
            rel = torch.full((n * n, n * n), 4)  # 4: unrelated, 3: same box, 2: same column, 1: same row
            rel[same[2]], rel[same[1]], rel[same[0]] = 3, 2, 1
            rel.fill_diagonal_(0)  # 0: the cell itself
            self.register_buffer("_rel", rel, persistent=False)  # [L, L] relation of cell pair
            self.pos_rcb = nn.Parameter(torch.zeros(3, n, cfg.dim))
            self.rel_bias = nn.Parameter(torch.zeros(cfg.depth, cfg.heads, 5))
            nn.init.normal_(self.pos_rcb, std=0.02)  # drawn here: the shipped Sudoku runs' seed-0 init
        else:
            self.pos = nn.Parameter(torch.zeros(cfg.max_len, cfg.dim))
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size)
        nn.init.normal_(self.tok.weight, std=0.02)
        if not cfg.grid and not cfg.image:  # drawn last: the init of every plain model so far
            nn.init.normal_(self.pos, std=0.02)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.tok

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        h = self.tok(input_ids) if inputs_embeds is None else inputs_embeds  # [B, L, D]
        L = h.shape[1]
        if L > self.config.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len={self.config.max_len}")
        bias = None
        if attention_mask is not None:  # [B, L] 1 = attend; keys only (bidirectional)
            bias = torch.zeros(attention_mask.shape, dtype=h.dtype, device=h.device)
            bias = bias.masked_fill(~attention_mask.bool(), float("-inf"))[:, None, None, :]
        if self.config.image:
            if L != self.config.max_len:
                raise ValueError(f"an image={self.config.image} model takes exactly {self.config.max_len} positions, got {L}")
            pix = self.pos_rc[0][self._rc[0]] + self.pos_rc[1][self._rc[1]]  # [n*n, D]
            h = h + torch.cat([self.pos_slot, pix]).to(h.dtype)
            biases = self.rel_bias[:, :, self._rel].to(h.dtype)[:, None]  # [depth, 1, heads, L, L]
            if bias is not None:
                biases = biases + bias
        elif self.config.grid:
            if L != self.config.max_len:
                raise ValueError(f"a grid={self.config.grid} model takes exactly {self.config.max_len} positions, got {L}")
            pos = self.pos_rcb[torch.arange(3, device=h.device)[:, None], self._rcb].sum(0)  # [L, D]
            h = h + pos.to(h.dtype)
            biases = self.rel_bias[:, :, self._rel].to(h.dtype)[:, None]  # [depth, 1, heads, L, L]
            if bias is not None:
                biases = biases + bias  # [depth, B, heads, L, L]
        else:
            h = h + self.pos[:L].to(h.dtype)
            biases = [bias] * len(self.blocks)
        for blk, b in zip(self.blocks, biases):
            h = blk(h, b)
        return self.head(self.norm(h))  # [B, L, V]
