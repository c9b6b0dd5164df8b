"""Data-parallel training: a 2-process gloo run under torchrun equals the single-process run."""
import os
import subprocess
import sys

import pytest
import torch
from test_trainer import MASK, V, tiny_task

from rmkernels.training import SynthConfig, precompute
from rmkernels.cli import main as rmk_main

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_process_gloo_run_matches_single_process(tmp_path):
    targets, answer = tiny_task(48, seed=5)
    data = str(tmp_path / "data")
    precompute(data, targets, answer, None, MASK, SynthConfig(corruption_rate=0.5, frames=5, history_steps=2),
               vocab_size=V, shard_size=20)
    args = ["--data", data, "--steps", "5", "--batch-size", "8", "--lr", "3e-3", "--warmup", "2",
            "--history-steps", "2", "--dim", "32", "--depth", "2", "--heads", "2", "--kernels", "reference",
            "--loss-weights", "1", "2", "0.5", "--rank-params", "--quiet"]
    # the same global batch of 8: one process, one micro-batch / two ranks, two micro-batches of 2 each
    assert rmk_main(["train", *args, "--out", str(tmp_path / "one")]) == 0  # `rmk train`
    # two ranks under torchrun through the module alias `python -m rmkernels.training`
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "rmkernels.training", *args, "--grad-accum", "2", "--threads", "1", "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    one = torch.load(tmp_path / "one" / "params_rank0.pt")
    r0 = torch.load(tmp_path / "two" / "params_rank0.pt")
    r1 = torch.load(tmp_path / "two" / "params_rank1.pt")
    assert one.keys() == r0.keys() == r1.keys() and any(k.startswith("history_norm.") for k in one)
    for k in one:
        assert torch.equal(r0[k], r1[k]), f"ranks disagree on {k}"
        a, b = r0[k].clone(), one[k].clone()
        if k.endswith("qkv.bias"):
            # the key bias has an exactly zero gradient (softmax is shift-invariant): its float-noise
            # gradient differs with the summation order and Adam normalises it, so only bound it
            dim = a.numel() // 3
            assert float((a[dim : 2 * dim] - b[dim : 2 * dim]).abs().max()) <= 2 * 3e-3 * 5
            a[dim : 2 * dim] = b[dim : 2 * dim]
        # same math, different float summation order (micro-batches, gloo all-reduce)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6, msg=k)
    ck_one = torch.load(tmp_path / "one" / "step_00000005.pt", weights_only=False)
    ck_two = torch.load(tmp_path / "two" / "step_00000005.pt", weights_only=False)
    assert len(ck_one["rng"]) == 1 and len(ck_two["rng"]) == 2
    for a, b in zip(ck_one["log"], ck_two["log"]):
        for name in ("loss", "reveal", "mask", "keep"):
            assert a[name] == pytest.approx(b[name], rel=1e-5), (a["step"], name)
