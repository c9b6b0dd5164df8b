"""Test setup: on a machine without CUDA, Triton kernels run in the interpreter.

TRITON_INTERPRET must be set before any kernel module is imported, so it is set here, at the
top of the first file pytest imports.
"""
import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU (run by benchmarks/gpu.sh)")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module on one thread: its tensors are tiny, and a second thread only adds contention
    on a shared 2-core machine (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def device():
    return torch.device("cuda" if HAS_CUDA else "cpu")


def poison_like(t: torch.Tensor) -> torch.Tensor:
    """A tensor shaped like ``t`` filled with a value no kernel writes (to expose unwritten elements)."""
    if t.dtype.is_floating_point:
        return torch.full_like(t, float("nan"))
    return torch.full_like(t, -12345)
