"""Shared helpers: implementation selection and argument validation (errors name the argument)."""
from __future__ import annotations

import os

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)


def triton_interpret() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1 set before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_impl(impl: str, device: torch.device, kernel: str, allowed=("reference",)) -> str:
    """Map ``impl`` ("auto" or a name in ``allowed``) to a concrete implementation.

    ``"auto"`` picks ``kernel`` on CUDA tensors, ``kernel`` on CPU tensors when it can run there
    (the Triton interpreter for Triton kernels; always for C++ kernels named ``"cpp"``), and
    ``"reference"`` otherwise.
    """
    names = set(allowed) | {kernel, "auto", "reference"}
    if impl not in names:
        raise ValueError(f"impl must be one of {sorted(names)}, got {impl!r}")
    if impl == "auto":
        if device.type == "cuda":
            return kernel
        if kernel == "triton" and triton_interpret():
            return kernel
        if kernel in ("cpp", "ext"):
            return kernel
        return "reference"
    if impl == "triton" and device.type != "cuda" and not triton_interpret():
        raise ValueError(
            "impl='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before rmkernels kernels are "
            f"imported to run in the CPU interpreter (got device {device})"
        )
    return impl


def check_tensor(name: str, t, *, dtypes=None, ndim=None, min_ndim=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(t.shape)}")


def check_same_device(**tensors) -> None:
    items = [(k, v) for k, v in tensors.items() if v is not None]
    if not items:
        return
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")


def check_index(name: str, value, size: int, size_name: str = "V") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np

            if isinstance(value, np.integer):
                value = int(value)
            else:
                raise TypeError
        except TypeError:
            raise ValueError(f"{name} must be an int, got {type(value).__name__}") from None
    if not 0 <= value < size:
        raise ValueError(f"{name}={value} is outside [0, {size_name}={size})")
    return value
