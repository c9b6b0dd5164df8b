"""The RM trainer: learning, exact resume, the global-batch weighted loss, hooks, bad input."""
import os
import shutil

import pytest
import torch

from rmkernels.history import HistoryNorm
from rmkernels.models import TinyMDM
from rmkernels.reference.loss import rm_loss_reference
from rmkernels.training import RMDataset, SynthConfig, SynthData, TrainConfig, Trainer, global_batch_indices, synthesize

V, MASK, L, P = 13, 12, 12, 6  # reverse-copy task: answer = the prompt reversed
DIM = 32


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_task(n, seed):
    """``targets [n, L]`` (prompt, then the prompt reversed) and ``answer [n, L]``."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, MASK, (n, P), generator=g)
    answer = (torch.arange(L) >= P).expand(n, L).clone()
    return torch.cat([src, src.flip(1)], 1), answer


def tiny_data(n=256, seed=0, history_steps=2, **synth):
    targets, answer = tiny_task(n, seed)
    cfg = SynthConfig(**{"corruption_rate": 0.5, "frames": 5, "history_steps": history_steps, **synth})
    return SynthData(targets, answer, MASK, cfg, vocab_size=V, seed=seed)


def make_trainer(data, *, init_seed=0, dropout=0.0, device="cpu", vocab=V, eval_fn=None, **cfg):
    torch.manual_seed(init_seed)
    model = TinyMDM(vocab_size=vocab, max_len=L, dim=DIM, depth=2, heads=2, dropout=dropout).to(device)
    H = cfg.get("history_steps", 2)
    norm = HistoryNorm(DIM, device=device) if H else None
    config = TrainConfig(**{"lr": 3e-3, "batch_size": 16, "total_steps": 10, "history_steps": H,
                            "loss_impl": "reference", "progress": False, **cfg})
    return Trainer(model, norm, data, config, eval_fn=eval_fn)


def step_with_grads(tr):
    """``tr.train_step()`` and the gradients the optimizer applied (normalised, reduced, clipped)."""
    got = []
    hook = tr.optimizer.register_step_pre_hook(lambda opt, a, k: got.extend(p.grad.clone() for p in tr.params))
    try:
        return tr.train_step(), got
    finally:
        hook.remove()


def test_trainer_lowers_the_loss_on_a_tiny_task():
    data = tiny_data(512)
    held_out = synthesize(*tiny_task(128, seed=99), None, MASK, data.config, seed=1, vocab_size=V)
    tr = make_trainer(data, total_steps=150, batch_size=32, warmup_steps=10, eval_every=50,
                      eval_fn=lambda t: {"held_out": float(t.loss(held_out).total)})
    with torch.no_grad():
        before = tr.loss(held_out)
    log = tr.fit()
    assert [r["step"] for r in log] == list(range(1, 151))
    assert [e["step"] for e in tr.eval_log] == [50, 100, 150]
    after = tr.eval_log[-1]["held_out"]
    assert after < 0.5 * float(before.total), (float(before.total), after)
    assert tr.model.training


def test_step_loss_and_gradient_are_the_global_batch_rm_loss():
    """Whatever the micro-batch split, a step's loss and gradient are rm_loss's on the global batch."""
    weights = (1.0, 2.5, 0.5)
    data = tiny_data(64, seed=3)
    tr = make_trainer(data, grad_accum=4, loss_weights=weights, clip_norm=None)
    batch = data.fetch(global_batch_indices(len(data), 16, 0, tr.config.seed), 0)
    ref = rm_loss_reference(tr.logits(batch), batch.labels, batch.part, weights)
    ref_grads = torch.autograd.grad(ref.total, tr.params)
    rec, grads = step_with_grads(tr)
    for name in ("total", "reveal", "mask", "keep"):
        assert rec["loss" if name == "total" else name] == pytest.approx(getattr(ref, name).item(), rel=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-7)
    assert all(not bool(p.grad.any()) for p in tr.params), "gradients are zeroed after the step"


def test_resume_equals_the_uninterrupted_run(tmp_path):
    # dropout makes the run depend on the RNG state; grad_accum, warmup and history are on
    kw = dict(total_steps=9, ckpt_every=4, grad_accum=2, warmup_steps=3, dropout=0.1, history_steps=2)
    full = make_trainer(tiny_data(40), ckpt_dir=str(tmp_path / "a"), **kw)
    full.fit()
    assert sorted(os.listdir(tmp_path / "a")) == [f"step_{s:08d}.pt" for s in (4, 8, 9)]  # no temp files left
    os.makedirs(tmp_path / "b")
    shutil.copy(tmp_path / "a" / "step_00000004.pt", tmp_path / "b")
    resumed = make_trainer(tiny_data(40), init_seed=123, ckpt_dir=str(tmp_path / "b"), **kw)
    torch.manual_seed(777)  # a different global RNG state: the checkpoint must restore it
    resumed.fit(resume=True)
    assert resumed.step == 9 and resumed.log == full.log
    for mod in ("model", "history_norm"):
        a, b = getattr(full, mod).state_dict(), getattr(resumed, mod).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), mod
    sa, sb = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    assert Trainer.latest_checkpoint(str(tmp_path / "b")).endswith("step_00000009.pt")


def test_fused_loss_kernel_path_matches_reference():
    """loss_impl='auto' (the Triton kernel; the interpreter on CPU) gives the reference's step."""
    runs = [make_trainer(tiny_data(32), batch_size=8, loss_impl=impl) for impl in ("auto", "reference")]
    (rec_k, grads_k), (rec_r, grads_r) = (step_with_grads(r) for r in runs)
    for name in ("loss", "reveal", "mask", "keep"):
        assert rec_k[name] == pytest.approx(rec_r[name], rel=1e-5)
    for g, r in zip(grads_k, grads_r):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_without_history_and_eval_mode_in_hook():
    modes = []
    tr = make_trainer(tiny_data(32, history_steps=0), history_steps=0, total_steps=3, eval_every=2,
                      eval_fn=lambda t: modes.append(t.model.training))
    assert tr.history_norm is None
    tr.fit()
    assert modes == [False, False] and tr.eval_log == [] and tr.model.training


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    f = [cfg.lr_factor(s) for s in range(15)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0] and f[4] == 1.0
    assert f[9] == pytest.approx(0.55) and f[14] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[4:], f[5:]))


def test_bad_input_is_a_clear_error():
    data = tiny_data(16)
    with pytest.raises(ValueError, match=r"data vocabulary \(13\) differs from the model's \(14\)"):
        make_trainer(data, vocab=V + 1)
    with pytest.raises(ValueError, match="history_steps=3 exceeds"):
        make_trainer(data, history_steps=3)
    with pytest.raises(ValueError, match="history_norm is required"):
        Trainer(TinyMDM(vocab_size=V, max_len=L, dim=DIM, depth=1, heads=2), None, data, TrainConfig(history_steps=2))
    with pytest.raises(ValueError, match="batch_size=10 must be divisible"):
        make_trainer(data, batch_size=10, grad_accum=4)
    for bad, match in [({"loss_weights": (1.0, -1.0, 1.0)}, ">= 0"), ({"loss_weights": (0, 0, 0)}, "all zero"),
                       ({"loss_weights": (1.0, 1.0)}, "3 numbers"), ({"lr": 0.0}, "lr"),
                       ({"total_steps": 0}, "total_steps"), ({"ckpt_every": 5}, "ckpt_dir")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)
    good = data.fetch(torch.arange(16))
    for field, value, match in [("part", 3, "part holds ids"), ("labels", V, "labels outside"),
                                ("input_ids", -1, "input_ids")]:
        t = good.tensors()[field].clone()
        t[2, -1] = value
        broken = RMDataset(type(good)(**{**good.tensors(), field: t}), vocab_size=V)
        with pytest.raises(ValueError, match=match):
            make_trainer(broken).train_step()
    no_answer = RMDataset(type(good)(**{**good.tensors(), "part": torch.full_like(good.part, -1)}), vocab_size=V)
    with pytest.raises(ValueError, match="no answer positions"):
        make_trainer(no_answer).train_step()
    keep_only = tiny_data(16, corruption_rate=0.0)
    with pytest.raises(ValueError, match="loss_weights=.* zero weight"):
        make_trainer(keep_only, loss_weights=(1.0, 1.0, 0.0)).train_step()


@pytest.mark.cuda
def test_bf16_autocast_training_on_cuda():
    data = tiny_data(256)
    tr = make_trainer(data, device="cuda", bf16=True, total_steps=60, batch_size=32, loss_impl="auto")
    assert tr.logits(data.fetch(torch.arange(4))).dtype == torch.bfloat16
    log = tr.fit()
    first, last = sum(r["loss"] for r in log[:5]) / 5, sum(r["loss"] for r in log[-5:]) / 5
    assert last < 0.8 * first and all(torch.isfinite(p).all() for p in tr.params)
