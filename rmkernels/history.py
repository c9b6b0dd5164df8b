"""History Reference state and parameters: the history FIFO and the HER LayerNorm module (docs/spec.md §3)."""
from __future__ import annotations

import json
import torch
import torch.nn as nn

from rmkernels._utils import INT_DTYPES, atomic_write, check_tensor

__all__ = ["HistoryBuffer", "HistoryNorm"]


class HistoryBuffer:
    """On-device FIFO of the last ``H`` previous states of every sequence in a batch (docs/spec.md §3).

    Attributes
    ----------
    ids : Tensor ``[B, H, L]``
        ``ids[b, j]`` is row ``b``'s state at distance ``d = j + 1`` (slot 0 the most recent), in
        the layout :func:`rmkernels.history_embed` takes as ``history_ids``. Slots at or beyond
        ``lengths[b]`` hold ``fill`` or states that have dropped out; they are never used.
    lengths : Tensor ``[B]`` int64
        Valid slots per row, ``0 .. H`` (``history_len`` of :func:`rmkernels.history_embed`).

    Both tensors are updated in place (their storage never changes, so a CUDA graph can capture
    the updates), and no method except :meth:`select` with a boolean mask synchronises with the
    host. Typical decoding step::

        x_new = step(x)                              # [B, L]
        changed = (x_new != x).any(1)                # [B] bool, stays on the device
        buf.push(x, changed)                         # x is the state before the change
        emb = history_embed(E, x_new, buf.ids, buf.lengths, gen_mask, ln_weight=..., ln_bias=...)
    """

    def __init__(self, batch_size: int, length: int, history_steps: int, device=None, dtype=torch.long,
                 fill: int = 0):
        for name, v in (("batch_size", batch_size), ("length", length), ("history_steps", history_steps)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if dtype not in INT_DTYPES:
            raise ValueError(f"dtype must be an integer dtype in {[str(d) for d in INT_DTYPES]}, got {dtype}")
        self.fill = int(fill)
        self.ids = torch.full((batch_size, history_steps, length), self.fill, dtype=dtype, device=device)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)

    @classmethod
    def _wrap(cls, ids: torch.Tensor, lengths: torch.Tensor, fill: int) -> "HistoryBuffer":
        buf = cls.__new__(cls)
        buf.ids, buf.lengths, buf.fill = ids, lengths, fill
        return buf

    @property
    def batch_size(self) -> int:
        return self.ids.shape[0]

    @property
    def history_steps(self) -> int:
        return self.ids.shape[1]

    @property
    def length(self) -> int:
        return self.ids.shape[2]

    @property
    def device(self) -> torch.device:
        return self.ids.device

    def _check_rows(self, name: str, rows: torch.Tensor) -> None:
        check_tensor(name, rows, dtypes=(torch.bool,) + INT_DTYPES, ndim=1)
        if rows.device != self.device:
            raise ValueError(f"{name} is on {rows.device} but the buffer is on {self.device}")
        if rows.dtype == torch.bool and rows.shape[0] != self.batch_size:
            raise ValueError(f"{name} (bool) must have shape [B] = [{self.batch_size}], got {tuple(rows.shape)}")

    def push(self, previous_state: torch.Tensor, changed_rows: torch.Tensor | None = None) -> None:
        """Push ``previous_state [B, L]`` as distance 1 of the rows where ``changed_rows [B]`` (bool) is
        True (all rows when ``None``); their older states move one slot back, the oldest drops out
        once ``H`` are stored. Other rows are untouched."""
        B, H, L = self.ids.shape
        check_tensor("previous_state", previous_state, dtypes=INT_DTYPES, ndim=2)
        if tuple(previous_state.shape) != (B, L):
            raise ValueError(f"previous_state must have shape [B, L] = [{B}, {L}], got {tuple(previous_state.shape)}")
        if previous_state.device != self.device:
            raise ValueError(f"previous_state is on {previous_state.device} but the buffer is on {self.device}")
        if changed_rows is not None:
            self._check_rows("changed_rows", changed_rows)
            if changed_rows.dtype != torch.bool:
                raise ValueError(f"changed_rows must be a bool mask [B], got dtype {changed_rows.dtype}")
        if H == 0:
            return
        shifted = torch.cat([previous_state.to(self.ids.dtype)[:, None], self.ids[:, :-1]], dim=1)  # [B, H, L]
        if changed_rows is None:
            self.ids.copy_(shifted)
            self.lengths.add_(1)
        else:
            torch.where(changed_rows[:, None, None], shifted, self.ids, out=self.ids)
            self.lengths.add_(changed_rows)
        self.lengths.clamp_(max=H)

    def reset(self, rows: torch.Tensor | None = None) -> None:
        """Forget the history of ``rows`` (a bool mask ``[B]`` or an index tensor; all rows when ``None``)."""
        if rows is None:
            self.ids.fill_(self.fill)
            self.lengths.zero_()
            return
        self._check_rows("rows", rows)
        if rows.dtype == torch.bool:
            self.ids.masked_fill_(rows[:, None, None], self.fill)
            self.lengths.masked_fill_(rows, 0)
        else:
            self.ids.index_fill_(0, rows, self.fill)
            self.lengths.index_fill_(0, rows, 0)

    def select(self, rows: torch.Tensor) -> "HistoryBuffer":
        """A new buffer holding copies of ``rows`` (index tensor, or bool mask ``[B]``: one host sync)."""
        self._check_rows("rows", rows)
        return self._wrap(self.ids[rows].clone(), self.lengths[rows].clone(), self.fill)

    def clone(self) -> "HistoryBuffer":
        return self._wrap(self.ids.clone(), self.lengths.clone(), self.fill)

    def __repr__(self) -> str:
        return (f"HistoryBuffer(batch_size={self.batch_size}, length={self.length}, "
                f"history_steps={self.history_steps}, device={self.device}, dtype={self.ids.dtype})")


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
                decay: float = 0.0, rotate: bool = True, check: bool = True, impl: str = "auto") -> torch.Tensor:
        from rmkernels.ops.history_embed import history_embed

        return history_embed(
            embedding_weight, input_ids, history_ids, history_len, token_mask,
            decay=decay, rotate=rotate, ln_weight=self.weight, ln_bias=self.bias, eps=self.eps, check=check,
            impl=impl,
        )

    def save(self, path: str, metadata: dict | None = None) -> None:
        """Write ``weight``/``bias`` as safetensors, atomically (:func:`rmkernels._utils.atomic_write`)."""
        from safetensors.torch import save_file

        meta = {"dim": str(self.dim), "eps": repr(self.eps), "extra": json.dumps(metadata or {})}
        tensors = {"weight": self.weight.detach().cpu().contiguous(), "bias": self.bias.detach().cpu().contiguous()}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

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
