"""History Reference state and parameters: the HER LayerNorm module (and the history FIFO)."""
from __future__ import annotations

import json
import os
import tempfile

import torch
import torch.nn as nn

__all__ = ["HistoryNorm"]


class HistoryNorm(nn.Module):
    """The HER LayerNorm: the only new parameters (``2 * D``) History Reference adds to a model.

    ``forward`` builds the model's ``inputs_embeds`` from its embedding table, the current tokens
    and the history (see :func:`rmkernels.history_embed`). Default initialisation: weight 1, bias 0.
    """

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=torch.float32):
        super().__init__()
        self.dim = int(dim)
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype))

    def forward(self, embedding_weight, input_ids, history_ids, history_len, token_mask, *,
                decay: float = 0.0, rotate: bool = True, impl: str = "auto") -> torch.Tensor:
        from rmkernels.ops.history_embed import history_embed

        return history_embed(
            embedding_weight, input_ids, history_ids, history_len, token_mask,
            decay=decay, rotate=rotate, ln_weight=self.weight, ln_bias=self.bias, eps=self.eps, impl=impl,
        )

    def save(self, path: str, metadata: dict | None = None) -> None:
        """Write ``weight``/``bias`` as safetensors, atomically (temp file + rename)."""
        from safetensors.torch import save_file

        meta = {"dim": str(self.dim), "eps": repr(self.eps), "extra": json.dumps(metadata or {})}
        tensors = {"weight": self.weight.detach().cpu().contiguous(), "bias": self.bias.detach().cpu().contiguous()}
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @classmethod
    def load(cls, path: str, device=None) -> "HistoryNorm":
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
        norm = cls(weight.numel(), eps=float(meta.get("eps", "1e-5")), device=device)
        with torch.no_grad():
            norm.weight.copy_(weight)
            norm.bias.copy_(bias)
        norm.metadata = json.loads(meta.get("extra", "{}"))
        return norm
