"""RM post-training: synthesis throughput and one optimizer step, fused loss vs eager reference.

    python -m pytest benchmarks/bench_training.py --benchmark-only

Sudoku-sized workload (L = 81, V = 11, the default 0.8M-parameter TinyMDM, History Reference with
6 slots). ``extra_info`` records examples per second. On a CPU the trainer runs the reference loss
only (the Triton interpreter measures nothing useful) at a smaller batch.
"""
import pytest
import torch

from rmkernels.history import HistoryNorm
from rmkernels.models import TinyMDM
from rmkernels.training import SynthConfig, SynthData, TrainConfig, Trainer, synthesize

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
V, MASK, L, H = 11, 0, 81, 6
BATCH = 256 if CUDA else 32


def _targets(n):
    g = torch.Generator().manual_seed(0)
    return torch.randint(1, V, (n, L), generator=g), torch.ones(n, L, dtype=torch.bool)


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _synth_config():
    return SynthConfig(corruption_rate=None, corruption_count=(4, 20), frames=6, history_steps=H,
                       wrong_ids=tuple(range(1, V)))


@pytest.mark.parametrize("base", ["uniform", "base_model"])
def test_synthesize(benchmark, base):
    targets, answer = _targets(BATCH)
    model = TinyMDM(vocab_size=V, max_len=L).to(DEV) if base == "base_model" else None
    cfg = _synth_config()
    benchmark.group = f"synthesize B={BATCH} L={L}"
    benchmark(lambda: synthesize(targets, answer, model, MASK, cfg, seed=1, vocab_size=V))
    benchmark.extra_info["examples/s"] = BATCH / benchmark.stats["mean"]


@pytest.mark.parametrize("impl", ["reference", "auto"])
def test_train_step(benchmark, impl):
    if impl == "auto" and not CUDA:
        pytest.skip("the fused loss kernel is timed on a GPU only")
    targets, answer = _targets(4 * BATCH)
    base = TinyMDM(vocab_size=V, max_len=L).to(DEV)
    data = SynthData(targets, answer, MASK, _synth_config(), base_model=base, seed=0)
    torch.manual_seed(0)
    model = TinyMDM(vocab_size=V, max_len=L).to(DEV)
    cfg = TrainConfig(batch_size=BATCH, total_steps=10**6, history_steps=H, loss_impl=impl, progress=False)
    trainer = Trainer(model, HistoryNorm(model.config.dim, device=DEV), data, cfg)
    trainer.train_step()  # warm-up (kernel compilation)

    def step():
        trainer.train_step()
        _sync()

    benchmark.group = f"train step B={BATCH} L={L} (synthesis included)"
    benchmark(step)
    benchmark.extra_info["examples/s"] = BATCH / benchmark.stats["mean"]
