"""Loading the compiled extension ``rmkernels._C`` (C++ CPU kernels, plus CUDA where built).

Importing it registers the C++ schemas and kernels under ``torch.ops.rmkernels``. The package works
without it (the eager references), so a missing or stale build is recorded, not raised.
"""
from __future__ import annotations

import importlib

import torch

try:
    _C = importlib.import_module("rmkernels._C")
    _C_ERROR = None
except (ImportError, OSError) as exc:  # not built, or built against another torch
    _C = None
    _C_ERROR = f"{type(exc).__name__}: {exc}"


def extension_available(device: torch.device | str = "cpu") -> bool:
    """True when the ``rmkernels._C`` kernels can run on ``device`` (CPU always once built; CUDA
    when the extension was built with its CUDA part)."""
    device = torch.device(device)
    if _C is None:
        return False
    return device.type == "cpu" or (device.type == "cuda" and _C.with_cuda())


def unavailable_reason(device: torch.device | str = "cpu") -> str:
    """Why the ``rmkernels._C`` kernels cannot run on ``device`` (for error messages)."""
    device = torch.device(device)
    if _C is None:
        why = _C_ERROR or "not built"
    elif device.type not in ("cpu", "cuda"):
        why = f"it has no kernels for {device.type} tensors"
    else:
        why = "it was built without CUDA (torch without CUDA or nvcc not found at build time)"
    return (f"rmkernels._C is unavailable on {device} ({why}); build it with "
            "`pip install --no-build-isolation -e .` or use impl='reference'")
