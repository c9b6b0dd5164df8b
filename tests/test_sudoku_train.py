"""Sudoku training: checkpoints, the MDM objective, deterministic resume, RM post-training smoke runs."""
import importlib.util
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from rmkernels.history import HistoryNorm
from rmkernels.models import TinyMDM, TinyMDMConfig
from rmkernels.tasks.sudoku.checkpoint import load_checkpoint, save_checkpoint
from rmkernels.tasks.sudoku.grids import MASK_ID, sample_grids, seed_grids
from rmkernels.tasks.sudoku.train import PretrainConfig, mask_batch, mdm_loss, pretrain

TINY = dict(dim=16, depth=1, heads=2)


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return TinyMDM(TinyMDMConfig(vocab_size=10, max_len=81, **TINY))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_checkpoint_round_trip(tmp_path, dtype):
    model = _tiny_model()
    norm = HistoryNorm(16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    path = save_checkpoint(str(tmp_path / "m.safetensors"), model, {"variant": "x"}, history_norm=norm, dtype=dtype)
    assert not list(tmp_path.glob("*.tmp"))
    loaded, lnorm, meta = load_checkpoint(path)
    assert meta["variant"] == "x" and meta["model_config"]["dim"] == 16
    x = torch.randint(0, 10, (3, 81))
    tol = 0 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(loaded(input_ids=x), model(input_ids=x), atol=tol, rtol=tol)
    torch.testing.assert_close(lnorm.weight, norm.weight.detach(), atol=tol, rtol=tol)
    _, no_norm, _ = load_checkpoint(save_checkpoint(str(tmp_path / "plain"), model))
    assert no_norm is None
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.safetensors"))


def test_export_stores_fp16_and_notes(tmp_path):
    from rmkernels.cli import main

    model = _tiny_model()
    src = save_checkpoint(str(tmp_path / "run" / "model.safetensors"), model, {"variant": "full"})
    dst = str(tmp_path / "ship" / "sudoku_full.safetensors")
    assert main(["sudoku", "train", "export", "--src", src, "--dst", dst, "--note", "wall=12 s"]) == 0
    loaded, _, meta = load_checkpoint(dst)
    assert meta["stored_dtype"] == "float16" and meta["wall"] == "12 s" and meta["variant"] == "full"
    assert (tmp_path / "ship" / "sudoku_full.safetensors").stat().st_size < 0.6 * (tmp_path / "run" / "model.safetensors").stat().st_size
    x = torch.randint(0, 10, (2, 81))
    torch.testing.assert_close(loaded(input_ids=x), model(input_ids=x), atol=2e-2, rtol=2e-2)


def test_mask_batch_and_loss():
    rng = np.random.default_rng(0)
    grids = sample_grids(seed_grids(2, rng), 64, rng)
    inputs, masked, t = mask_batch(grids, rng)
    assert masked.any(1).all() and (inputs[masked] == MASK_ID).all() and (inputs[~masked] == grids[~masked]).all()
    assert 0.3 < masked.mean() < 0.7 and t.shape == (64,)
    model = _tiny_model()
    for weighting in ("token", "1/t"):
        loss = mdm_loss(model, grids, np.random.default_rng(1), weighting)
        assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    with pytest.raises(ValueError, match="weighting"):
        mdm_loss(model, grids, rng, "elbo")


def _cfg(steps):
    return PretrainConfig(steps=steps, batch_size=8, warmup=2, pool_size=8, val_boards=8, eval_every=2,
                          ckpt_every=2, **TINY)


def test_pretrain_resume_matches_an_uninterrupted_run(tmp_path):
    full = pretrain(_cfg(4), str(tmp_path / "a"), log=lambda s: None)
    pretrain(_cfg(2), str(tmp_path / "b"), log=lambda s: None)
    resumed = pretrain(_cfg(4), str(tmp_path / "b"), log=lambda s: None)  # continues from step 2
    ma, _, meta = load_checkpoint(full)
    mb, _, _ = load_checkpoint(resumed)
    for (k, a), (_, b) in zip(ma.state_dict().items(), mb.state_dict().items()):
        assert torch.equal(a, b), k
    assert meta["step"] == 4 and meta["kind"] == "base"
    rows = [json.loads(x) for x in open(tmp_path / "b" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [2, 4] and all("fill4_20" in r for r in rows)


def test_posttrain_smoke(tmp_path):
    from rmkernels.tasks.sudoku.posttrain import PostTrainConfig, posttrain, variant_settings

    base = pretrain(_cfg(2), str(tmp_path / "base"), log=lambda s: None)
    cfg = PostTrainConfig(steps=2, batch_size=8, warmup=1, pool_size=4, targets=32, val_boards=8, eval_every=1,
                          ckpt_every=1, kernels="reference")
    logs = []
    path = posttrain("full", base, str(tmp_path / "full"), cfg, log=logs.append)
    model, norm, meta = load_checkpoint(path)
    assert norm is not None and norm.dim == 16
    assert meta["decode"] == variant_settings("full", cfg.decay) == {
        "history_steps": 6, "history_decay": 0.5, "history_rotate": True}
    assert [json.loads(x)["step"] for x in logs] == [1, 2]
    base_model, _, _ = load_checkpoint(base)
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), base_model.state_dict().values()))
    _, no_norm, meta_rm = load_checkpoint(posttrain("rm", base, str(tmp_path / "rm"), cfg, log=logs.append))
    assert no_norm is None and meta_rm["decode"]["history_steps"] == 0
    with pytest.raises(ValueError, match="variant"):
        variant_settings("rm_full", 0.5)


def test_posttrain_second_stage_from_variant(tmp_path, monkeypatch):
    """``init`` continues a variant's checkpoint (model and HER norm), ``keep_weight`` reaches the loss."""
    import rmkernels.training as training
    from rmkernels.tasks.sudoku.posttrain import PostTrainConfig, posttrain

    base = pretrain(_cfg(2), str(tmp_path / "base"), log=lambda s: None)
    cfg = PostTrainConfig(steps=2, batch_size=8, warmup=1, pool_size=4, targets=32, val_boards=8, eval_every=2,
                          ckpt_every=2, kernels="reference", her_gain="0.5")
    first = posttrain("full", base, str(tmp_path / "full"), cfg, log=lambda s: None)
    seen = []

    class Recording(training.Trainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            seen.append(self.config.loss_weights)

    monkeypatch.setattr(training, "Trainer", Recording)
    frozen = replace(cfg, init=first, keep_weight=8.0, lr=1e-12, warmup=0)  # ~no update: the result is the init
    second = posttrain("full", base, str(tmp_path / "full2"), frozen, log=lambda s: None)
    assert seen == [(1.0, 1.0, 8.0)]
    m1, n1, _ = load_checkpoint(first)
    m2, n2, meta = load_checkpoint(second)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.allclose(a, b, rtol=0, atol=1e-9), k
    assert torch.allclose(n1.weight, n2.weight, rtol=0, atol=1e-9) and torch.allclose(n1.bias, n2.bias, rtol=0, atol=1e-9)
    assert not torch.allclose(n1.weight, torch.full_like(n1.weight, 0.5))  # the first stage trained it
    assert meta["config"]["init"] == first and meta["config"]["keep_weight"] == 8.0
    assert meta["init"]["steps"] == 2 and meta["init"]["config"]["keep_weight"] == 1.0
    mixed = posttrain("full", base, str(tmp_path / "full3"), replace(cfg, init=first, onpolicy_boards=4, onpolicy_rows=2),
                      log=lambda s: None)
    onpolicy = load_checkpoint(mixed)[2]["onpolicy"]  # a 2-step base fails every board: all 4 kept
    assert onpolicy["boards"] == 4 and onpolicy["failed"] == 4 and onpolicy["states"] >= 4
    for labels in ("canonical", "anchored") if importlib.util.find_spec("ortools") else ():  # nearest grids instead
        canon = posttrain("full", base, str(tmp_path / f"full4_{labels}"), replace(cfg, init=first, onpolicy_boards=4,
                          onpolicy_rows=2, onpolicy_labels=labels), log=lambda s: None)
        onpolicy = load_checkpoint(canon)[2]["onpolicy"]
        assert onpolicy["labels"] == labels and 0 <= onpolicy["relabelled"] <= 4 and onpolicy["failed"] == 4
    # a directory that holds another run is refused (the trainer would resume from its checkpoints)
    with pytest.raises(ValueError, match="full2 holds a run with other settings \\(init, keep_weight"):
        posttrain("full", base, str(tmp_path / "full2"), cfg, log=lambda s: None)
    rm = posttrain("rm", base, str(tmp_path / "rm"), cfg, log=lambda s: None)
    with pytest.raises(ValueError, match="init"):
        posttrain("full", base, str(tmp_path / "bad"), replace(cfg, init=rm), log=lambda s: None)


def test_posttrain_rejects_bad_second_stage_settings(tmp_path):
    from rmkernels.tasks.sudoku.posttrain import PostTrainConfig, posttrain

    base = pretrain(_cfg(1), str(tmp_path / "base"), log=lambda s: None)
    cfg = PostTrainConfig(steps=1, batch_size=8, pool_size=4, targets=16, val_boards=8, kernels="reference")
    cases = ((dict(keep_weight=0.0), "keep_weight"), (dict(keep_weight=float("nan")), "keep_weight"),
             (dict(onpolicy_boards=-1), "onpolicy_boards"), (dict(onpolicy_boards=4, onpolicy_rows=8), "onpolicy_rows"),
             (dict(onpolicy_boards=4, onpolicy_rows=2), "needs init"), (dict(onpolicy_labels="best"), "onpolicy_labels"))
    for bad, match in cases:
        with pytest.raises(ValueError, match=match):
            posttrain("rm", base, str(tmp_path / "out"), replace(cfg, **bad), log=lambda s: None)
