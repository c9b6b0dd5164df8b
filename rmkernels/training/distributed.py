"""Data-parallel helpers over ``torch.distributed`` (gloo on CPU, nccl on CUDA), for ``torchrun``.

The trainer does its own gradient all-reduce (no DDP wrapper): gradients are flattened into
buckets, summed across ranks once per optimizer step, and copied back. Every rank then applies
the same update, so parameters stay identical across ranks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "all_reduce_sum_", "broadcast_", "dist_info", "init_distributed", "shutdown"]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """This process's place in the current process group (rank 0 of 1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo(0, 1, 0)


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE``/``RANK``/``MASTER_ADDR`` env).

    Without ``WORLD_SIZE > 1`` nothing is initialised. ``backend`` defaults to nccl when CUDA is
    available (each rank then uses ``cuda:LOCAL_RANK``), gloo otherwise.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist_info()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)
    return dist_info()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _buckets(tensors, bucket_elems: int):
    bucket, size = [], 0
    for t in tensors:
        if bucket and (size + t.numel() > bucket_elems or t.dtype != bucket[0].dtype):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel()
    if bucket:
        yield bucket


def all_reduce_sum_(tensors, bucket_elems: int = 1 << 24) -> None:
    """Sum ``tensors`` (same device) across ranks in place, a few flat buckets at a time."""
    if dist_info().world_size == 1:
        return
    for bucket in _buckets(list(tensors), bucket_elems):
        flat = torch.cat([t.reshape(-1) for t in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for t, piece in zip(bucket, flat.split([t.numel() for t in bucket])):
            t.copy_(piece.view_as(t))


def broadcast_(tensors, src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s values."""
    if dist_info().world_size == 1:
        return
    for t in tensors:
        dist.broadcast(t.data, src=src)
