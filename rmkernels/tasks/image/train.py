"""Training for the digit-image task: base MDM pretraining and RM post-training of the four
variants, both with the project's :class:`~rmkernels.training.Trainer` (resumable, atomic
checkpoints), and ``rmk image train``.

* **base**: a TinyMDM with 2-D positions (``image=8``) over 65-token rows (condition slot + 64
  pixels), trained as a mask diffusion model on the train split: per image ``t ~ U(0, 1)``, each
  pixel masked with probability ``t`` (at least one), cross-entropy on the masked pixels (the
  ``reveal`` part of ``rm_loss``); images moved by one pixel (``shift_prob``) where no ink leaves
  the frame; the class token replaced by ``NO_CLASS`` with probability ``cond_drop``.
* **variants** (``rm``, ``rm_hist``, ``rm_hist_decay``, ``full``; :mod:`rmkernels.training.variants`):
  from the base, docs/spec.md §4 data (:mod:`rmkernels.training.synth`) over three kinds of rows:

  - *repair, base top-k*: ``corrupt`` pixels noisy, wrong levels drawn uniformly from the frozen
    base's top-k (gold excluded), the rest masked;
  - *repair, uniform*: the same with wrong levels uniform over the other 16 levels (the
    evaluation's corruption);
  - *edit*: a train image under another class's token; the target keeps the image but takes the
    pixels of that class's nearest train image (L1) where the two differ by ``>= edit_delta``
    levels, so those pixels are wrong (labels: mask), the rest kept
    (:func:`rmkernels.training.trajectories_from_corruption`).

  ``keep_weight`` is ``w_keep`` of docs/spec.md §4 (re-mask only pixels more than ``w / (1 + w)`` likely wrong).

``rmk image train all --out DIR --ship`` runs the whole recipe (base, four variants, fp16 export
into the package assets); each stage resumes from its run directory.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from rmkernels.history import HistoryNorm
from rmkernels.models import TinyMDM, TinyMDMConfig
from rmkernels.models.checkpoint import export_checkpoint, load_checkpoint, save_checkpoint
from rmkernels.reference.loss import PART_IGNORE, PART_REVEAL
from rmkernels.tasks.image.data import (
    CLASSES, LEVELS, MASK_ID, PIXELS, SEQ_LEN, VOCAB_SIZE, load_split, make_instances, shift_images, to_tokens)
from rmkernels.tasks.common import add_dataclass_args
from rmkernels.training.variants import (HISTORY_STEPS, VARIANTS, claim_run_dir, her_gain, variant_settings,
                                         variant_train_config)


@dataclass
class PretrainConfig:
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup: int = 200
    weight_decay: float = 0.01
    dim: int = 64
    depth: int = 4
    heads: int = 4
    seed: int = 0
    cond_drop: float = 0.3  # share of rows trained without their class token
    shift_prob: float = 0.5  # one-pixel shift augmentation
    eval_every: int = 500
    ckpt_every: int = 250
    kernels: str = "auto"  # impl of the loss


@dataclass
class PostTrainConfig:
    steps: int = 2400
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.01
    decay: float = 0.5  # history decay lambda of the *_decay and full variants
    keep_weight: float = 1.5
    corrupt_min: int = 1
    corrupt_max: int = 16
    wrong_fraction: float = 0.8
    topk: int = 8
    uniform_frac: float = 0.75  # repair rows with uniform (not base top-k) wrong levels
    edit_frac: float = 0.35  # rows that are edit pairs
    edit_delta: int = 4
    cond_drop: float = 0.5
    shift_prob: float = 0.5
    frames: int = 6
    seed: int = 0
    her_gain: str = "0"
    eval_every: int = 600
    ckpt_every: int = 200
    kernels: str = "auto"  # impl of the loss and history_embed ops, and of the eval decoding
    val_repair: int = 256
    val_edit: int = 128


def _check_unit(name: str, v: float) -> None:
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {v}")


def _batch(inp, gold, part, H: int = 0):
    from rmkernels.training import RMBatch

    B = inp.shape[0]
    am = torch.ones(B, SEQ_LEN, dtype=torch.bool)
    am[:, 0] = False
    return RMBatch(input_ids=torch.as_tensor(inp), labels=torch.as_tensor(gold), part=torch.as_tensor(part),
                   history_ids=torch.full((B, H, SEQ_LEN), MASK_ID, dtype=torch.int64),
                   history_len=torch.zeros(B, dtype=torch.int64), token_mask=am)


class ImageMDMData:
    """Masked-diffusion batches of train images for the Trainer: ``fetch(indices, step)`` (a pure
    function of its arguments) returns an :class:`~rmkernels.training.RMBatch` whose only loss part
    is ``reveal`` on the masked pixels."""

    vocab_size, mask_id, history_steps = VOCAB_SIZE, MASK_ID, 0

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int = 0, cond_drop: float = 0.3,
                 shift_prob: float = 0.5):
        _check_unit("cond_drop", cond_drop)
        _check_unit("shift_prob", shift_prob)
        self.images, self.labels, self.seed = images, labels, int(seed)
        self.cond_drop, self.shift_prob = float(cond_drop), float(shift_prob)

    def __len__(self) -> int:
        return len(self.images)

    def fetch(self, indices, step: int = 0):
        idx = np.asarray(torch.as_tensor(indices).reshape(-1))
        B = len(idx)
        rng = np.random.default_rng([self.seed, 1, int(step)])
        img = shift_images(self.images[idx], rng, self.shift_prob)
        cond = np.where(rng.random(B) < self.cond_drop, -1, self.labels[idx])
        gold = to_tokens(img, cond)
        t = rng.random(B)
        masked = rng.random((B, PIXELS)) < t[:, None]
        masked[np.arange(B), rng.integers(PIXELS, size=B)] = True
        inp = gold.copy()
        inp[:, 1:][masked] = MASK_ID
        part = np.full(gold.shape, PART_IGNORE, dtype=np.int64)
        part[:, 1:][masked] = PART_REVEAL
        return _batch(inp, gold, part)


def nearest_by_class(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``[N, 10]``: for each image, the index of the nearest (L1) other image of each class."""
    x = images.astype(np.int32)
    out = np.zeros((len(x), CLASSES), dtype=np.int64)
    for i0 in range(0, len(x), 128):
        d = np.abs(x[i0 : i0 + 128, None, :] - x[None, :, :]).sum(-1)  # [b, N]
        d[np.arange(d.shape[0]), np.arange(i0, i0 + d.shape[0])] = np.iinfo(np.int32).max  # not itself
        for c in range(CLASSES):
            cols = np.nonzero(labels == c)[0]
            out[i0 : i0 + 128, c] = cols[d[:, cols].argmin(1)]
    return out


class ImageRMData:
    """Online RM post-training data (repair rows from the base's top-k or uniform, edit rows; see
    the module docstring) for the Trainer; ``fetch(indices, step)`` is a pure function of its
    arguments (and the frozen base)."""

    vocab_size, mask_id = VOCAB_SIZE, MASK_ID

    def __init__(self, images, labels, synth, *, base_model=None, seed: int = 0, cond_drop: float = 0.5,
                 shift_prob: float = 0.5, uniform_frac: float = 0.5, edit_frac: float = 0.3, edit_delta: int = 4):
        for name, v in (("cond_drop", cond_drop), ("shift_prob", shift_prob), ("uniform_frac", uniform_frac),
                        ("edit_frac", edit_frac)):
            _check_unit(name, v)
        if not 1 <= edit_delta < LEVELS:
            raise ValueError(f"edit_delta must be in [1, {LEVELS - 1}], got {edit_delta}")
        if uniform_frac < 1.0 and edit_frac < 1.0 and base_model is None:
            raise ValueError("base_model is required unless every repair row is uniform (uniform_frac=1)")
        self.images, self.labels, self.synth, self.base_model = images, labels, synth, base_model
        self.seed, self.cond_drop, self.shift_prob = int(seed), float(cond_drop), float(shift_prob)
        self.uniform_frac, self.edit_frac, self.edit_delta = float(uniform_frac), float(edit_frac), int(edit_delta)
        self.history_steps = int(synth.history_steps)
        self.nearest = nearest_by_class(images, labels) if edit_frac > 0 else None

    def __len__(self) -> int:
        return len(self.images)

    def fetch(self, indices, step: int = 0):
        from rmkernels.training import RMBatch, build_trajectories, make_batch, trajectories_from_corruption
        from rmkernels.training.data import step_seed

        idx = np.asarray(torch.as_tensor(indices).reshape(-1))
        B = len(idx)
        rng = np.random.default_rng([self.seed, 2, int(step)])
        img = shift_images(self.images[idx], rng, self.shift_prob)
        cond = np.where(rng.random(B) < self.cond_drop, -1, self.labels[idx])
        u = rng.random(B)
        edit = u < self.edit_frac
        uniform = ~edit & (u < self.edit_frac + (1 - self.edit_frac) * self.uniform_frac)
        target_cls = (self.labels[idx] + rng.integers(1, CLASSES, size=B)) % CLASSES
        gold = to_tokens(img, cond)
        source = gold.copy()
        if edit.any():  # an unshifted train image under another class's token
            e = np.nonzero(edit)[0]
            s = self.images[idx[e]]
            g = self.images[self.nearest[idx[e], target_cls[e]]]
            gold[e] = to_tokens(np.where(np.abs(s - g) >= self.edit_delta, g, s), target_cls[e])
            source[e] = to_tokens(s, target_cls[e])
        gold_t, am = torch.from_numpy(gold), torch.ones(B, SEQ_LEN, dtype=torch.bool)
        am[:, 0] = False
        seed, ids = step_seed(self.seed, step), torch.from_numpy(idx)
        parts, order = [], []
        for rows, kind in ((~edit & ~uniform, "topk"), (uniform, "uniform"), (edit, "edit")):
            r = torch.from_numpy(np.nonzero(rows)[0])
            if r.numel() == 0:
                continue
            if kind == "edit":
                traj = trajectories_from_corruption(gold_t[r], torch.from_numpy(source)[r], MASK_ID, self.synth,
                                                    seed=seed, row_ids=ids[r])
            else:
                traj = build_trajectories(gold_t[r], am[r], self.base_model if kind == "topk" else None, MASK_ID,
                                          self.synth, seed=seed, row_ids=ids[r], vocab_size=VOCAB_SIZE)
            parts.append(make_batch(traj, gold_t[r], am[r], MASK_ID, self.history_steps))
            order.append(r)
        inv = torch.cat(order).argsort()
        return RMBatch.cat(parts).map(lambda t: t[inv])


# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def fill_accuracy(model, ratios=(0.15, 0.5), seed: int = 0) -> dict:
    """One-shot argmax fills of masked val pixels (class token given): accuracy and MAE per ratio."""
    images, labels, _ = load_split("val")
    rng = np.random.default_rng(seed)
    out = {}
    for r in ratios:
        masked = rng.random(images.shape) < r
        tok = to_tokens(np.where(masked, MASK_ID, images), labels)
        logits = model(input_ids=torch.from_numpy(tok))[:, 1:, :LEVELS]
        pred = logits.argmax(-1).numpy()
        out[f"acc@{r}"] = round(float((pred == images)[masked].mean()), 4)
        out[f"mae@{r}"] = round(float(np.abs(pred - images)[masked].mean()), 4)
    return out


def _trainer(model, norm, data, cfg, out_dir: str, settings: dict | None, keep_weight: float, eval_fn):
    from rmkernels.training import Trainer

    return Trainer(model, norm, data, variant_train_config(cfg, out_dir, settings, keep_weight=keep_weight),
                   eval_fn=eval_fn)


def _finished(out_dir: str, steps: int) -> str | None:
    """The run's model file if the run already finished (its metadata says ``steps`` steps)."""
    path = os.path.join(out_dir, "model.safetensors")
    meta = os.path.join(out_dir, "model.json")
    if os.path.exists(path) and os.path.exists(meta):
        with open(meta) as f:
            if json.load(f).get("steps") == steps:
                return path
    return None


def _time_so_far(out_dir: str) -> tuple[float, float]:
    """``(wall_s, cpu_s)`` logged by earlier sessions of a resumed run (its last metrics row)."""
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0.0, 0.0
    with open(path) as f:
        rows = [json.loads(x) for x in f if x.strip()]
    return (float(rows[-1].get("wall_s", 0.0)), float(rows[-1].get("cpu_s", 0.0))) if rows else (0.0, 0.0)


def _logger(out_dir: str, log, t0: float, every: int):
    path = os.path.join(out_dir, "metrics.jsonl")
    c0 = time.process_time()
    wall0, cpu0 = _time_so_far(out_dir)

    def write(trainer, extra: dict) -> dict:
        recent = trainer.log[-every:]
        row = {"step": trainer.step, "wall_s": round(wall0 + time.time() - t0, 1),
               "cpu_s": round(cpu0 + time.process_time() - c0, 1)}
        row.update({k: round(sum(r[k] for r in recent) / len(recent), 4) for k in ("loss", "reveal", "mask", "keep")})
        row.update(extra)
        log(json.dumps(row))
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
        return row

    return write


def pretrain(cfg: PretrainConfig, out_dir: str, log=print) -> str:
    """Pretrain the base MDM; writes ``out_dir/model.safetensors`` (+ .json), trainer checkpoints in
    ``out_dir/ckpt`` (resumed from) and ``metrics.jsonl``; returns the model path."""
    claim_run_dir(out_dir, {"variant": "base", "base": None, "config": asdict(cfg)})
    done = _finished(out_dir, cfg.steps)
    if done:
        log(f"{out_dir}: finished earlier ({cfg.steps} steps)")
        return done
    torch.manual_seed(cfg.seed)
    model = TinyMDM(TinyMDMConfig(vocab_size=VOCAB_SIZE, max_len=SEQ_LEN, dim=cfg.dim, depth=cfg.depth,
                                  heads=cfg.heads, image=8))
    images, labels, _ = load_split("train")
    data = ImageMDMData(images, labels, cfg.seed, cfg.cond_drop, cfg.shift_prob)
    t0, c0 = time.time(), time.process_time()
    wall0, cpu0 = _time_so_far(out_dir)
    write = _logger(out_dir, log, t0, cfg.eval_every)
    trainer = _trainer(model, None, data, cfg, out_dir, None, 1.0, lambda tr: write(tr, fill_accuracy(tr.model)))
    trainer.fit(resume=True)
    meta = {"kind": "base", "config": asdict(cfg), "command": " ".join(sys.argv), "steps": trainer.step,
            "wall_s": round(wall0 + time.time() - t0, 1), "cpu_s": round(cpu0 + time.process_time() - c0, 1),
            "params": sum(p.numel() for p in model.parameters())}
    return save_checkpoint(os.path.join(out_dir, "model.safetensors"), model, meta)


@torch.no_grad()
def val_stats(model, norm, settings: dict, n_repair: int = 256, n_edit: int = 128, kernels: str = "auto") -> dict:
    """Quick val numbers of a variant: repair (MAE after, preservation, recall) and edit (target
    class %, pixels changed) with the evaluation's decoding."""
    from rmkernels.tasks.image.evaluate import canvas_of, decode, decode_config, score

    out = {}
    meta = {"decode": settings}
    for task, n in (("repair", n_repair), ("edit", n_edit)):
        if n <= 0:
            continue
        inst = make_instances(task, "val", n)
        cfg = decode_config(task, "full", meta, record_trajectory=False)
        final, steps, _ = decode(model, norm, *canvas_of(task, "full", inst), cfg, kernels=kernels)
        m, _ = score(task, inst, final)
        keys = ("mae_after", "preservation_pct", "recall_pct", "classifier_pct") if task == "repair" else \
            ("target_pct", "changed_per_image")
        out.update({f"{task}_{k}": round(m[k], 3) for k in keys})
    return out


def posttrain(variant: str, base_path: str, out_dir: str, cfg: PostTrainConfig, log=print) -> str:
    """Post-train one variant from the base checkpoint; writes ``out_dir/model.safetensors`` (+ .json)."""
    from rmkernels.training import SynthConfig

    settings = variant_settings(variant, cfg.decay)
    if not cfg.keep_weight > 0:
        raise ValueError(f"keep_weight must be > 0, got {cfg.keep_weight}")
    base, _, base_meta = load_checkpoint(base_path)
    for p in base.parameters():
        p.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    H = settings["history_steps"]
    model = copy.deepcopy(base)
    for p in model.parameters():
        p.requires_grad_(True)
    norm = HistoryNorm(model.config.dim) if H else None
    if norm is not None:
        with torch.no_grad():
            norm.weight.fill_(her_gain(cfg.her_gain, model))
    claim_run_dir(out_dir, {"variant": variant, "base": base_path, "config": asdict(cfg)})
    done = _finished(out_dir, cfg.steps)
    if done:
        log(f"{out_dir}: finished earlier ({cfg.steps} steps)")
        return done
    synth = SynthConfig(corruption_rate=None, corruption_count=(cfg.corrupt_min, cfg.corrupt_max),
                        wrong_fraction=cfg.wrong_fraction, topk=cfg.topk, frames=cfg.frames,
                        history_steps=HISTORY_STEPS, wrong_ids=tuple(range(LEVELS)))
    images, labels, _ = load_split("train")
    data = ImageRMData(images, labels, synth, base_model=base, seed=cfg.seed, cond_drop=cfg.cond_drop,
                       shift_prob=cfg.shift_prob, uniform_frac=cfg.uniform_frac, edit_frac=cfg.edit_frac,
                       edit_delta=cfg.edit_delta)
    t0, c0 = time.time(), time.process_time()
    wall0, cpu0 = _time_so_far(out_dir)
    write = _logger(out_dir, log, t0, cfg.eval_every)
    hook = lambda tr: write(tr, val_stats(tr.model, tr.history_norm, settings, cfg.val_repair, cfg.val_edit,  # noqa: E731
                                          cfg.kernels))
    trainer = _trainer(model, norm, data, cfg, out_dir, settings, cfg.keep_weight, hook)
    trainer.fit(resume=True)
    meta = {"kind": "rm_variant", "variant": variant, "decode": settings, "config": asdict(cfg),
            "synth": synth.to_dict(), "base": {"path": base_path, "config": base_meta.get("config"),
                                               "wall_s": base_meta.get("wall_s")},
            "command": " ".join(sys.argv), "wall_s": round(wall0 + time.time() - t0, 1),
            "cpu_s": round(cpu0 + time.process_time() - c0, 1), "steps": trainer.step}
    return save_checkpoint(os.path.join(out_dir, "model.safetensors"), model, meta, history_norm=norm)


# ---------------------------------------------------------------------------------------------
def _config(cls, args, prefix: str = ""):
    return cls(**{k: getattr(args, prefix + k) for k in cls.__dataclass_fields__})


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="python -m rmkernels.tasks.image.train")
    sub = p.add_subparsers(dest="stage", required=True)
    b = sub.add_parser("base", help="pretrain the base MDM on the train images")
    b.add_argument("--out", required=True, help="run directory (checkpoint, trainer states, metrics)")
    b.add_argument("--threads", type=int, default=1)
    add_dataclass_args(b, PretrainConfig)
    v = sub.add_parser("variant", help="post-train one RM variant from the base MDM")
    v.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    v.add_argument("--base", required=True, help="base MDM checkpoint (.safetensors)")
    v.add_argument("--out", required=True)
    v.add_argument("--threads", type=int, default=1)
    add_dataclass_args(v, PostTrainConfig)
    e = sub.add_parser("export", help="re-save a checkpoint for shipping (fp16 storage by default)")
    e.add_argument("--src", required=True)
    e.add_argument("--dst", required=True)
    e.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    a = sub.add_parser("all", help="the whole recipe: base, the four variants, fp16 export")
    a.add_argument("--out", required=True, help="folder of the run directories (base/, rm/, ...)")
    a.add_argument("--ship", action="store_true", help="export into the package assets (else OUT/export)")
    a.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variants to train")
    a.add_argument("--threads", type=int, default=1)
    add_dataclass_args(a, PretrainConfig, "base-")
    add_dataclass_args(a, PostTrainConfig, "rm-")
    return p


def run(args) -> int:
    torch.set_num_threads(getattr(args, "threads", 1))
    log = lambda s: print(s, flush=True)  # noqa: E731
    if args.stage == "base":
        path = pretrain(_config(PretrainConfig, args), args.out, log)
    elif args.stage == "variant":
        path = posttrain(args.variant, args.base, args.out, _config(PostTrainConfig, args), log)
    elif args.stage == "export":
        path = export_checkpoint(args.src, args.dst, getattr(torch, args.dtype))
    else:
        from rmkernels.tasks.image.evaluate import ASSETS

        t0 = time.time()
        variants = [v for v in args.variants.split(",") if v]
        for v in variants:
            if v not in VARIANTS:
                raise SystemExit(f"--variants: unknown variant {v!r} (choose from {sorted(VARIANTS)})")
        dst = ASSETS if args.ship else os.path.join(args.out, "export")
        log(f"[all] base -> {args.out}/base")
        base = pretrain(_config(PretrainConfig, args, "base_"), os.path.join(args.out, "base"), log)
        export_checkpoint(base, os.path.join(dst, "image_base.safetensors"))
        for v in variants:
            log(f"[all] {v} -> {args.out}/{v} ({time.time() - t0:.0f} s so far)")
            path = posttrain(v, base, os.path.join(args.out, v), _config(PostTrainConfig, args, "rm_"), log)
            export_checkpoint(path, os.path.join(dst, f"image_{v}.safetensors"))
        path = dst
        log(f"[all] done in {time.time() - t0:.0f} s")
    print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run(build_parser().parse_args()))


__all__ = ["ImageMDMData", "ImageRMData", "PostTrainConfig", "PretrainConfig", "nearest_by_class", "posttrain",
           "pretrain", "val_stats"]
