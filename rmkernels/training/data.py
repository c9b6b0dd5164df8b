"""Training data sources: precomputed shards (offline synthesis) and online synthesis.

A data source is any object with ``len(data)`` and ``data.fetch(indices, step) -> RMBatch``;
``vocab_size``, ``mask_id`` and ``history_steps`` attributes are checked by the trainer when
present. The trainer picks the example indices of step ``s`` with :func:`global_batch_indices`,
a pure function of ``(seed, s)``, so a run (and a resumed run) sees the same batches.

Shard format (``precompute``): ``shard_00000.safetensors, ...`` holding the :class:`RMBatch`
fields (ids stored as int32, ``part`` as int8) and ``index.json`` (written last) with the shard
sizes, ``vocab_size``, ``mask_id``, ``seq_len``, ``history_steps``, ``seed`` and the synthesis config.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from functools import lru_cache

import torch

from rmkernels._utils import atomic_write
from rmkernels.reference.rng import seed_key
from rmkernels.training.synth import RMBatch, SynthConfig, check_inputs, vocab_size_of, synthesize

__all__ = ["RMDataset", "SynthData", "global_batch_indices", "precompute", "step_seed"]

FORMAT = "rmkernels-rm-v1"
_STORE_DTYPES = {
    "input_ids": torch.int32, "labels": torch.int32, "part": torch.int8,
    "history_ids": torch.int32, "history_len": torch.int32,
}


def step_seed(seed: int, step: int) -> int:
    """A 32-bit seed for step ``step`` of a stream with seed ``seed`` (distinct per step)."""
    return seed_key(((int(seed) & 0xFFFFFFFF) << 32) | (int(step) & 0xFFFFFFFF))


@lru_cache(maxsize=4)
def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step_seed(seed, epoch))
    return torch.randperm(n, generator=g)


def global_batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Example indices of one optimizer step: consecutive slices of per-epoch permutations of
    ``range(n)``, so every example is seen once per epoch and a step's batch depends on
    ``(seed, step)`` only.

    Parameters
    ----------
    n : int
        Number of examples.
    batch_size : int
        Global batch size.
    step, seed : int
        The optimizer step and the data-order seed.

    Returns
    -------
    Tensor
        int64 ``[batch_size]``.

    Example
    -------
    >>> idx = global_batch_indices(10, 4, step=2, seed=0)      # examples 8, 9 of epoch 0, 2 of epoch 1
    >>> idx.shape
    torch.Size([4])
    """
    if n < 1:
        raise ValueError("data is empty")
    pos = torch.arange(step * batch_size, (step + 1) * batch_size)
    epoch, offset = pos // n, pos % n
    out = torch.empty(batch_size, dtype=torch.long)
    for e in epoch.unique().tolist():
        sel = epoch == e
        out[sel] = _epoch_permutation(n, int(seed), int(e))[offset[sel]]
    return out


def _pack(batch: RMBatch) -> dict:
    return {k: v.detach().to("cpu", _STORE_DTYPES.get(k, v.dtype)).contiguous() for k, v in batch.tensors().items()}


def _unpack(tensors: dict) -> RMBatch:
    return RMBatch(**{k: (v.long() if k in _STORE_DTYPES else v) for k, v in tensors.items()})


class RMDataset:
    """Precomputed RM examples: in memory (``RMDataset(batch)``) or shards on disk (``RMDataset.open``).

    ``fetch(indices)`` gathers rows (loading only the shards it needs, a few kept cached);
    iterating streams the shards in order as batches. Attributes: ``vocab_size``, ``mask_id``,
    ``history_steps`` and, for opened shards, ``config`` (the SynthConfig) and ``index``.
    """

    def __init__(self, batch: RMBatch | None = None, *, vocab_size=None, mask_id=None, _shards=None, cache=2):
        if batch is not None:
            self._files, self._sizes = None, [len(batch)]
            self._cache = OrderedDict({0: batch})
            self.history_steps = batch.history_ids.shape[1]
        else:
            self._files, self._sizes = _shards
            self._cache = OrderedDict()
        self._max_cache = max(1, int(cache))
        self._ends = torch.tensor(self._sizes).cumsum(0)
        self.vocab_size, self.mask_id = vocab_size, mask_id

    @classmethod
    def open(cls, path: str, cache: int = 2) -> "RMDataset":
        """Open a directory written by :func:`precompute`."""
        index_file = os.path.join(path, "index.json")
        if not os.path.exists(index_file):
            raise ValueError(f"path {path!r} holds no index.json (not a precomputed dataset, or unfinished)")
        with open(index_file) as f:
            index = json.load(f)
        if index.get("format") != FORMAT:
            raise ValueError(f"path {path!r}: unknown format {index.get('format')!r}")
        files = [os.path.join(path, s["file"]) for s in index["shards"]]
        ds = cls(vocab_size=index["vocab_size"], mask_id=index["mask_id"], cache=cache,
                 _shards=(files, [int(s["rows"]) for s in index["shards"]]))
        ds.history_steps = int(index["history_steps"])
        ds.config, ds.index = SynthConfig.from_dict(index["synth"]), index
        return ds

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._sizes) else 0

    @property
    def num_shards(self) -> int:
        return len(self._sizes)

    def shard(self, i: int) -> RMBatch:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        from safetensors.torch import load_file

        batch = _unpack(load_file(self._files[i]))
        self._cache[i] = batch
        while len(self._cache) > self._max_cache:
            self._cache.popitem(last=False)
        return batch

    def __iter__(self):
        for i in range(self.num_shards):
            yield self.shard(i)

    def fetch(self, indices: torch.Tensor, step: int = 0) -> RMBatch:
        """Rows ``indices`` (any order, repeats allowed) as one batch; ``step`` is unused."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu()
        if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= len(self):
            raise ValueError(f"indices must be non-empty and lie in [0, {len(self)})")
        shard_of = torch.searchsorted(self._ends, idx, right=True)  # [n]
        pieces, where = [], []
        for s in shard_of.unique().tolist():
            sel = (shard_of == s).nonzero().flatten()
            rows = idx[sel] - (int(self._ends[s - 1]) if s else 0)
            pieces.append(self.shard(s).map(lambda t: t[rows]))
            where.append(sel)
        out = RMBatch.cat(pieces)
        inv = torch.cat(where).argsort()
        return out.map(lambda t: t[inv])


def precompute(
    path: str,
    targets: torch.Tensor,  # [N, L]
    answer_mask: torch.Tensor,  # [N, L] bool
    base_model,
    mask_id: int,
    config: SynthConfig,
    *,
    seed: int = 0,
    batch_size: int = 256,
    shard_size: int = 4096,
    attention_mask: torch.Tensor | None = None,
    vocab_size: int | None = None,
) -> RMDataset:
    """Synthesise every example once (row ``i`` uses RNG counter ``i``) and write shards to ``path``.

    The result equals ``synthesize(targets, answer_mask, base_model, mask_id, config, seed=seed)``
    row for row (base-model synthesis: up to batch-size effects on its logits). Each shard and the
    index are written atomically; ``index.json`` comes last.

    Parameters
    ----------
    path : str
        Output folder (created).
    targets, answer_mask, base_model, mask_id, config, seed, attention_mask, vocab_size
        As in :func:`rmkernels.training.synthesize`.
    batch_size : int
        Rows synthesised per base-model forward.
    shard_size : int
        Rows per ``shard_XXXXX.safetensors`` file.

    Returns
    -------
    RMDataset
        The written dataset, opened (``rmk train --data PATH`` reads it).

    Example
    -------
    >>> targets = torch.randint(0, 20, (8, 6)); answer = torch.ones(8, 6, dtype=torch.bool)
    >>> data = precompute("shards/", targets, answer, None, 20, SynthConfig(), vocab_size=21)  # doctest: +SKIP
    >>> len(data)  # doctest: +SKIP
    8
    """
    from safetensors.torch import save_file

    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}")
    V = vocab_size_of(base_model, vocab_size)
    mask_id = check_inputs(targets, answer_mask, attention_mask, None, mask_id, V, config)
    N, L = targets.shape
    shards = []
    for s0 in range(0, N, shard_size):
        chunks = []
        for b0 in range(s0, min(s0 + shard_size, N), batch_size):
            b1 = min(b0 + batch_size, s0 + shard_size, N)
            am = None if attention_mask is None else attention_mask[b0:b1]
            chunks.append(synthesize(
                targets[b0:b1], answer_mask[b0:b1], base_model, mask_id, config, seed=seed,
                row_ids=torch.arange(b0, b1, device=targets.device), attention_mask=am, vocab_size=V,
            ).to("cpu"))
        name = f"shard_{len(shards):05d}.safetensors"
        tensors = _pack(RMBatch.cat(chunks))
        atomic_write(os.path.join(path, name), lambda tmp: save_file(tensors, tmp))
        shards.append({"file": name, "rows": min(s0 + shard_size, N) - s0})
    index = {
        "format": FORMAT, "num_examples": N, "shards": shards, "vocab_size": V, "mask_id": mask_id,
        "seq_len": L, "history_steps": int(config.history_steps), "seed": int(seed), "synth": config.to_dict(),
    }

    def write_index(tmp):
        with open(tmp, "w") as f:
            json.dump(index, f, indent=1)

    atomic_write(os.path.join(path, "index.json"), write_index)
    return RMDataset.open(path)


class SynthData:
    """Online synthesis from clean targets: ``fetch(idx, step)`` synthesises rows ``idx`` afresh
    with seed ``step_seed(seed, step)`` and RNG counters ``idx`` (a pure function of its arguments).

    Every row is validated once, here. Each rank of a data-parallel run synthesises only its rows.
    """

    def __init__(self, targets, answer_mask, mask_id, config: SynthConfig, *, base_model=None, seed=0,
                 attention_mask=None, vocab_size=None):
        self.vocab_size = vocab_size_of(base_model, vocab_size)
        self.mask_id = check_inputs(targets, answer_mask, attention_mask, None, mask_id, self.vocab_size, config)
        self.targets, self.answer_mask, self.attention_mask = targets, answer_mask, attention_mask
        self.config, self.base_model, self.seed = config, base_model, int(seed)
        self.history_steps = int(config.history_steps)

    def __len__(self) -> int:
        return self.targets.shape[0]

    def fetch(self, indices: torch.Tensor, step: int = 0) -> RMBatch:
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).to(self.targets.device)
        am = None if self.attention_mask is None else self.attention_mask[idx]
        return synthesize(
            self.targets[idx], self.answer_mask[idx], self.base_model, self.mask_id, self.config,
            seed=step_seed(self.seed, step), row_ids=idx, attention_mask=am, vocab_size=self.vocab_size,
        )
