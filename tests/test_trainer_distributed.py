"""Data-parallel training: a 2-process gloo run under torchrun equals the single-process run."""
import os
import subprocess
import sys

import pytest
import torch
from test_trainer import MASK, V, tiny_task

from rmkernels.cli import main as rmk_main
from rmkernels.models import TinyMDM
from rmkernels.training import SynthConfig, TrainConfig, precompute

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
    # Adam moves a parameter by at most about lr per step: sum of lr over the 5 steps (warmup 2, cosine)
    lr_sum = 3e-3 * sum(TrainConfig(lr=1.0, warmup_steps=2, total_steps=5).lr_factor(s) for s in range(5))
    torch.manual_seed(0)  # the init of `python -m rmkernels.training --seed 0`
    init = TinyMDM(vocab_size=V, max_len=12, dim=32, depth=2, heads=2).state_dict()
    for k in one:
        assert torch.equal(r0[k], r1[k]), f"ranks disagree on {k}"
        a, b = r0[k].clone(), one[k].clone()
        if k.endswith("qkv.bias"):
            # the key bias has an exactly zero gradient (softmax is shift-invariant): Adam normalises
            # its float-noise gradient (|g| << eps), so it barely moves in either run -- a real
            # gradient would move it by ~lr_sum -- and its value cannot change the model's output
            dim = a.numel() // 3
            k0 = init[k[len("model."):]][dim : 2 * dim]
            for run in (a, b):
                assert float((run[dim : 2 * dim] - k0).abs().max()) < 0.05 * lr_sum, k  # measured: 0.006 * lr_sum
            a[dim : 2 * dim] = b[dim : 2 * dim]
        # same math, different float summation order (micro-batches, gloo all-reduce): equal to
        # float32 noise, except where Adam divides a nearly cancelling gradient by its own RMS and
        # amplifies that noise (rare elements, never more than 1 % of the largest possible move)
        close = torch.isclose(a, b, rtol=1e-5, atol=2e-6)
        assert float(close.double().mean()) >= 0.999, (k, int((~close).sum()), a.numel())
        assert float((a - b).abs().max()) < 0.01 * lr_sum, k
    # the two models compute the same function (the key bias included, which cancels)
    models = []
    for params in (one, r0):
        m = TinyMDM(vocab_size=V, max_len=12, dim=32, depth=2, heads=2).eval()
        m.load_state_dict({k[len("model."):]: v for k, v in params.items() if k.startswith("model.")})
        models.append(m)
    with torch.no_grad():
        z1, z2 = (m(input_ids=targets) for m in models)
    torch.testing.assert_close(z1, z2, rtol=0, atol=1e-5)  # measured: 1e-6
    ck_one = torch.load(tmp_path / "one" / "step_00000005.pt", weights_only=False)
    ck_two = torch.load(tmp_path / "two" / "step_00000005.pt", weights_only=False)
    assert len(ck_one["rng"]) == 1 and len(ck_two["rng"]) == 2
    for a, b in zip(ck_one["log"], ck_two["log"]):
        for name in ("loss", "reveal", "mask", "keep"):
            assert a[name] == pytest.approx(b[name], rel=1e-5), (a["step"], name)
