"""The conftest's per-test seeding (issue 22): each test's generators are seeded from its node id,
and a failing test's report names that seed, so a failure can be reproduced from the report."""
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from conftest import node_seed


def test_generators_are_seeded_from_the_node_id(request):
    seed = node_seed(request.node.nodeid)
    assert dict(request.node.user_properties)["seed"] == seed
    t, n, r = torch.randn(4), np.random.rand(4), random.random()  # the test's first draws
    assert torch.equal(t, torch.randn(4, generator=torch.Generator().manual_seed(seed)))
    assert np.array_equal(n, np.random.RandomState(seed).rand(4))
    assert r == random.Random(seed).random()


def test_a_failing_test_reports_its_seed(tmp_path):
    (tmp_path / "conftest.py").write_text((Path(__file__).parent / "conftest.py").read_text())
    (tmp_path / "test_fails.py").write_text(textwrap.dedent("""
        import torch
        def test_fails():
            assert float(torch.rand(())) < 0
    """))
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_fails.py"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"seeded with {node_seed('test_fails.py::test_fails')}" in p.stdout, p.stdout
