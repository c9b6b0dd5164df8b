"""Test setup: on a machine without CUDA, Triton kernels run in the interpreter.

TRITON_INTERPRET must be set before any kernel module is imported, so it is set here, at the
top of the first file pytest imports.

Every test's random inputs are reproducible: torch, numpy's global generator and ``random`` are
seeded from the test's node id before it runs (the seed is printed in the report of a failing
test), module-scoped fixtures from the module's node id, and hypothesis runs derandomized.
"""
import os
import random
import zlib

import numpy as np
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


# ----------------------------------------------------------------------------------------------
# Reproducible randomness: every test draws from generators seeded by its own node id
# ----------------------------------------------------------------------------------------------
def node_seed(nodeid: str) -> int:
    """The seed of a test (or module): crc32 of its pytest node id, stable across runs and hosts."""
    return zlib.crc32(nodeid.encode())


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's global generator and ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


seed_everything(0)  # whatever runs at import / collection time

try:  # property tests draw their examples deterministically too (a fixed derivation per test)
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("rmkernels", derandomize=True)
    _hypothesis_settings.load_profile("rmkernels")
except ImportError:  # hypothesis is a dev dependency; without it its tests fail to import
    pass


@pytest.fixture(scope="module", autouse=True)
def _seed_module(request):
    """Module-scoped fixtures (built before any test's own seed) draw from the module's seed."""
    seed_everything(node_seed(request.node.nodeid))


@pytest.fixture(autouse=True)
def _seed_test(request):
    """Seed every generator from the test's node id; the seed is printed when the test fails."""
    seed = node_seed(request.node.nodeid)
    request.node.user_properties.append(("seed", seed))
    seed_everything(seed)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        seed = dict(item.user_properties).get("seed", node_seed(item.nodeid))
        report.sections.append(("random seed", f"torch, numpy and random were seeded with {seed} "
                                               f"(crc32 of the node id {item.nodeid!r})"))


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
