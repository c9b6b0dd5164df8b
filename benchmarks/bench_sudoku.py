"""Sudoku evaluation speed: decoding the shipped 1000-board test split (pytest-benchmark).

    python -m pytest benchmarks/bench_sudoku.py --benchmark-only -s

Issue target: all 1000 boards in under 60 s on 2 CPU cores with the shipped full model. On a CPU
the decoder's ops run eagerly (``kernels="reference"``: the benchmark conftest turns on the Triton
interpreter, which measures nothing useful; at V = 10 the model forward is the whole cost anyway).
On CUDA the fused kernels (``kernels="auto"``) are compared with the eager reference in the same
run. ``extra_info`` records boards per second and the decoding steps per board.
"""
import os

import pytest
import torch

from rmkernels.tasks.sudoku.checkpoint import load_checkpoint
from rmkernels.tasks.sudoku.evaluate import checkpoint_path, decode_boards, decode_config, load_boards
from rmkernels.tasks.sudoku.metrics import board_metrics

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
N = int(os.environ.get("SUDOKU_BENCH_BOARDS", "1000"))
KERNELS = ["auto", "reference"] if CUDA else ["reference"]


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("system", ["full", "rm"])
def test_decode_test_split(benchmark, system, kernels):
    path = checkpoint_path(system)
    if not os.path.exists(path):
        pytest.skip(f"{path} is not shipped yet")
    if not CUDA:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    model, norm, meta = load_checkpoint(path, device=DEV)
    corrupted, solution = load_boards(limit=N)
    boards = torch.as_tensor(corrupted, device=DEV)
    cfg = decode_config(meta)
    batch = 1000 if CUDA else 128

    def call():
        out = decode_boards(model, norm, boards, cfg, batch_size=batch, kernels=kernels)
        if CUDA:
            torch.cuda.synchronize()
        return out

    benchmark.group = f"sudoku decode {N} boards ({DEV}, {torch.get_num_threads()} threads)"
    final, steps, traj = benchmark.pedantic(call, rounds=1 if not CUDA else 3, iterations=1, warmup_rounds=0)
    m = board_metrics(final.cpu(), solution, steps.cpu(), traj.cpu())
    benchmark.extra_info.update({"boards/s": N / benchmark.stats["mean"], "mean_steps": m["mean_steps"],
                                 "exact_pct": m["exact_pct"]})
    print(f"\n{system} [{kernels}]: {benchmark.stats['mean']:.2f} s for {N} boards "
          f"({N / benchmark.stats['mean']:.0f} boards/s), exact {m['exact_pct']:.1f}%, steps {m['mean_steps']:.2f}")
