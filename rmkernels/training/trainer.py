"""The Reflective Masking post-training loop (docs/spec.md §4): AdamW, warmup + cosine, accumulation,
clipping, bf16 autocast on CUDA, checkpoints with exact resume, data parallel over torchrun.

Loss of one optimizer step: the weighted mean over the whole *global* batch (all ranks, all
micro-batches), exactly what :func:`rmkernels.rm_loss` would return on it:

    loss = sum_k w_k * S_k / sum_k w_k * N_k,   S_k = sum of CE over part k, N_k its size

Each micro-batch back-propagates its own ``sum_k w_k S_k`` (from ``rm_loss``'s per-part means
times the part sizes); the gradients and ``(S_k, N_k)`` are summed across ranks and divided by
the global weight once. The result does not depend on how the global batch is split over ranks
and micro-batches (up to float summation order).

One host synchronisation per optimizer step reads the reduced loss statistics (logging and the
zero-weight check).

Determinism: the example indices of step ``s`` are :func:`~rmkernels.training.data.global_batch_indices`
``(seed, s)`` and online data is synthesised from ``(data seed, s)``, so the batches are a pure
function of the step; checkpoints also hold every rank's RNG states (dropout), and resuming gives
the uninterrupted run bit for bit.
"""
from __future__ import annotations

import glob
import math
import os
import random
from dataclasses import asdict, dataclass

import numpy as np
import torch

from rmkernels._utils import IMPLS, atomic_write, resolve_impl
from rmkernels.ops.loss_utils import check_weights
from rmkernels.ops.rm_loss import rm_loss
from rmkernels.reference.loss import PART_IGNORE, PART_KEEP
from rmkernels.training.data import global_batch_indices
from rmkernels.training.distributed import all_reduce_sum_, broadcast_, dist_info
from rmkernels.training.synth import RMBatch

__all__ = ["TrainConfig", "Trainer"]


@dataclass
class TrainConfig:
    """Training hyper-parameters.

    ``batch_size`` is the *global* number of examples per optimizer step, split evenly over ranks
    and then over ``grad_accum`` micro-batches. ``history_steps = 0`` trains without History
    Reference (plain ``input_ids``); otherwise the first ``history_steps`` slots of the data's
    history feed :class:`rmkernels.HistoryNorm`. ``log_every`` / ``eval_every`` / ``ckpt_every``
    are in optimizer steps (0 = off; the eval hook and a checkpoint also run at the end of
    ``fit``). ``bf16`` autocasts the forward on CUDA only. ``loss_impl`` / ``history_impl`` (one of
    ``"auto", "triton", "ext", "reference"``) are preferences for ``rm_loss`` / ``history_embed``,
    resolved as ``generate(kernels=...)`` resolves its own: the named kernel where the op has it on
    the model's device, else the op's ``"auto"`` choice.
    """

    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    total_steps: int = 1000
    min_lr_ratio: float = 0.0
    grad_accum: int = 1
    clip_norm: float | None = 1.0
    batch_size: int = 32
    bf16: bool = True
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    history_steps: int = 0
    history_decay: float = 0.0
    history_rotate: bool = True
    log_every: int = 10
    eval_every: int = 0
    ckpt_every: int = 0
    ckpt_dir: str | None = None
    seed: int = 0
    progress: bool = True
    loss_impl: str = "auto"
    history_impl: str = "auto"

    def __post_init__(self):
        try:
            self.loss_weights = check_weights(self.loss_weights)
        except ValueError as e:
            raise ValueError(f"loss_weights: {e}") from None
        for name in ("total_steps", "grad_accum", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "history_steps", "log_every", "eval_every", "ckpt_every"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0 or None, got {self.clip_norm}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("loss_impl", "history_impl"):
            if getattr(self, name) not in IMPLS:
                raise ValueError(f"{name} must be one of {list(IMPLS)}, got {getattr(self, name)!r}")
        if self.ckpt_every and not self.ckpt_dir:
            raise ValueError("ckpt_every > 0 needs ckpt_dir")

    def lr_factor(self, step: int) -> float:
        """Linear warmup over ``warmup_steps``, then cosine from 1 to ``min_lr_ratio`` at ``total_steps``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


class Trainer:
    """Post-train ``model`` (and the HER LayerNorm ``history_norm``) on RM data.

    Parameters
    ----------
    model : nn.Module
        ``model(input_ids=None, inputs_embeds=None, attention_mask=None) -> logits [B, L, V]`` (or an
        output with ``.logits``, as the native LLaDA / Dream models return; a model's
        ``logits_shift = 1`` is applied) with ``get_input_embeddings()``. Parameters with
        ``requires_grad=False`` are frozen.
    history_norm : rmkernels.HistoryNorm or None
        Required when ``config.history_steps > 0``.
    data : data source
        ``len(data)`` and ``data.fetch(indices, step) -> RMBatch`` (:class:`RMDataset`,
        :class:`SynthData`). Its ``vocab_size`` / ``history_steps``, when known, are checked.
    config : TrainConfig
    eval_fn : callable, optional
        ``eval_fn(trainer) -> dict | None``, run in eval mode under ``no_grad`` every ``eval_every``
        steps and at the end of ``fit``, on every rank; results go to ``trainer.eval_log``.
    """

    def __init__(self, model, history_norm, data, config: TrainConfig, eval_fn=None):
        self.model, self.history_norm, self.data, self.config, self.eval_fn = model, history_norm, data, config, eval_fn
        self.dist = dist_info()
        self.device = next(model.parameters()).device
        # a native LLaDA / Dream model's embedding may have padding rows past config.vocab_size
        v_cfg = getattr(getattr(model, "config", None), "vocab_size", None)
        self.vocab_size = int(v_cfg) if isinstance(v_cfg, int) else int(model.get_input_embeddings().num_embeddings)
        self.loss_impl = resolve_impl("rm_loss", config.loss_impl, self.device, fallback=True)
        self.history_impl = resolve_impl("history_embed", config.history_impl, self.device, fallback=True)
        self._check_setup()
        modules = [model] + ([history_norm] if history_norm is not None else [])
        self.params = [p for m in modules for p in m.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("model and history_norm have no trainable parameters")
        broadcast_([p for m in modules for p in m.parameters()] + [b for m in modules for b in m.buffers()])
        for p in self.params:  # grads always exist, so every rank and run updates the same set
            p.grad = torch.zeros_like(p)
        groups = [
            {"params": [p for p in self.params if p.dim() >= 2], "weight_decay": config.weight_decay},
            {"params": [p for p in self.params if p.dim() < 2], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, config.lr_factor)
        self.step = 0
        self.log: list[dict] = []
        self.eval_log: list[dict] = []

    # ------------------------------------------------------------------------------------------
    def _check_setup(self) -> None:
        cfg, data = self.config, self.data
        per_rank = cfg.batch_size // self.dist.world_size
        if cfg.batch_size % (self.dist.world_size * cfg.grad_accum):
            raise ValueError(
                f"batch_size={cfg.batch_size} must be divisible by world_size * grad_accum = "
                f"{self.dist.world_size} * {cfg.grad_accum}"
            )
        if len(data) < 1:
            raise ValueError("data is empty")
        v_data = getattr(data, "vocab_size", None)
        if v_data is not None and int(v_data) != self.vocab_size:
            raise ValueError(f"data vocabulary ({v_data}) differs from the model's ({self.vocab_size})")
        h_data = getattr(data, "history_steps", None)
        if h_data is not None and cfg.history_steps > int(h_data):
            raise ValueError(f"history_steps={cfg.history_steps} exceeds the data's {h_data} history slots")
        if cfg.history_steps > 0 and self.history_norm is None:
            raise ValueError("history_norm is required when history_steps > 0")
        self.micro_size = per_rank // cfg.grad_accum

    def _check_batch(self, batch: RMBatch) -> None:
        """Data checks on the host copy of a batch (raises ValueError naming the field)."""
        V, H = self.vocab_size, self.config.history_steps
        part = batch.part
        if bool(((part < PART_IGNORE) | (part > PART_KEEP)).any()):
            raise ValueError("data: part holds ids outside {-1, 0, 1, 2}")
        active = part >= 0
        if bool((active & ((batch.labels < 0) | (batch.labels >= V))).any()):
            raise ValueError(f"data: labels outside [0, V={V}) at non-ignored positions")
        ids = [batch.input_ids] + ([batch.history_ids[:, :H]] if H else [])
        if any(bool(((t < 0) | (t >= V)).any()) for t in ids):
            raise ValueError(f"data: input_ids / history_ids outside [0, V={V})")

    def _autocast(self):
        on = self.config.bf16 and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=on)

    def logits(self, batch: RMBatch) -> torch.Tensor:
        """Model logits ``[B, L, V]`` for a batch (with History Reference when ``history_steps > 0``)."""
        cfg, H = self.config, self.config.history_steps
        batch = batch.to(self.device)
        with self._autocast():
            if H == 0:
                out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            else:
                embeds = self.history_norm(
                    self.model.get_input_embeddings().weight, batch.input_ids, batch.history_ids[:, :H].contiguous(),
                    batch.history_len.clamp(max=H), batch.token_mask,
                    decay=cfg.history_decay, rotate=cfg.history_rotate, impl=self.history_impl,
                )
                out = self.model(inputs_embeds=embeds, attention_mask=batch.attention_mask)
        logits = out if isinstance(out, torch.Tensor) else out.logits  # native models return an MDMOutput
        if getattr(self.model, "logits_shift", 0):  # Dream: position i is predicted by the output at i - 1
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits

    def loss(self, batch: RMBatch):
        """``rm_loss`` of one batch with ``config.loss_weights`` (for evaluation hooks)."""
        batch = batch.to(self.device)
        return rm_loss(self.logits(batch), batch.labels, batch.part, weights=self.config.loss_weights,
                       impl=self.loss_impl)

    # ------------------------------------------------------------------------------------------
    def train_step(self) -> dict:
        """One optimizer step on the global batch of ``self.step``; returns its log record."""
        cfg, rank, world = self.config, self.dist.rank, self.dist.world_size
        idx = global_batch_indices(len(self.data), cfg.batch_size, self.step, cfg.seed)
        per_rank = cfg.batch_size // world
        batch = self.data.fetch(idx[rank * per_rank : (rank + 1) * per_rank], self.step).to("cpu")
        self._check_batch(batch)
        w = torch.tensor(cfg.loss_weights, dtype=torch.float64)
        stats = torch.zeros(7, dtype=torch.float64, device=self.device)  # [sum w S, S_r, S_m, S_k, N_r, N_m, N_k]
        self.model.train()
        if self.history_norm is not None:
            self.history_norm.train()
        for m in range(cfg.grad_accum):
            mb = batch.map(lambda t: t[m * self.micro_size : (m + 1) * self.micro_size])
            counts = torch.stack([(mb.part == k).sum() for k in range(3)]).double()  # [3] host
            if counts.sum() == 0:
                continue
            mb = mb.to(self.device)
            out = rm_loss(self.logits(mb), mb.labels, mb.part, check=False, impl=self.loss_impl)
            sums = torch.stack([out.reveal, out.mask, out.keep]) * counts.to(self.device)  # [3] S_k
            weighted = (sums * w.to(self.device)).sum()
            weighted.backward()
            stats += torch.cat([weighted.detach()[None].double(), sums.detach().double(), counts.to(self.device)])
        all_reduce_sum_([stats])
        all_reduce_sum_([p.grad for p in self.params])
        s = stats.tolist()  # the step's one host synchronisation
        W = float(torch.tensor(s[4:7], dtype=torch.float64) @ w)
        if W == 0.0:
            self.optimizer.zero_grad(set_to_none=False)
            if sum(s[4:7]) == 0:
                raise ValueError(f"data: the global batch of step {self.step} has no answer positions (part is -1)")
            raise ValueError(f"loss_weights={cfg.loss_weights} give zero weight to every position of step {self.step}")
        for p in self.params:
            p.grad.div_(W)
        grad_norm = None
        if cfg.clip_norm is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_norm))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=False)
        self.step += 1
        n = [max(c, 1.0) for c in s[4:7]]
        return {"step": self.step, "lr": lr, "loss": s[0] / W, "reveal": s[1] / n[0], "mask": s[2] / n[1],
                "keep": s[3] / n[2], "grad_norm": grad_norm}

    def evaluate(self) -> dict | None:
        """Run ``eval_fn`` in eval mode without gradients; the result (with ``step``) is appended to ``eval_log``."""
        if self.eval_fn is None:
            return None
        modules = [m for m in (self.model, self.history_norm) if m is not None]
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            with torch.no_grad():
                result = self.eval_fn(self)
        finally:
            for m, mode in zip(modules, modes):
                m.train(mode)
        if result is not None:
            result = {"step": self.step, **result}
            self.eval_log.append(result)
        return result

    def fit(self, resume: bool = False) -> list[dict]:
        """Train until ``config.total_steps``; with ``resume`` first load the latest checkpoint of
        ``config.ckpt_dir`` (if any). Returns the log records (one per step)."""
        from tqdm.auto import tqdm

        cfg = self.config
        if resume and cfg.ckpt_dir:
            path = self.latest_checkpoint(cfg.ckpt_dir)
            if path is not None:
                self.load_checkpoint(path)
        bar = tqdm(total=cfg.total_steps, initial=self.step, disable=not (cfg.progress and self.dist.is_main),
                   dynamic_ncols=True, desc="rm-train")
        try:
            while self.step < cfg.total_steps:
                rec = self.train_step()
                self.log.append(rec)
                bar.update(1)
                if cfg.log_every and (self.step % cfg.log_every == 0 or self.step == cfg.total_steps):
                    bar.set_postfix({k: f"{rec[k]:.3f}" for k in ("loss", "reveal", "mask", "keep")}
                                    | {"lr": f"{rec['lr']:.2e}"})
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.total_steps:
                    self._report(self.evaluate(), bar)
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and self.step < cfg.total_steps:
                    self.save_checkpoint()
        finally:
            bar.close()
        self._report(self.evaluate(), bar)
        if cfg.ckpt_dir:
            self.save_checkpoint()
        return self.log

    def _report(self, result, bar) -> None:
        if result is not None and self.dist.is_main and self.config.progress:
            bar.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))

    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a resume needs; RNG states of every rank (a collective call under torchrun)."""
        rng = [None] * self.dist.world_size
        if self.dist.world_size > 1:
            torch.distributed.all_gather_object(rng, _rng_state())
        else:
            rng[0] = _rng_state()
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "history_norm": None if self.history_norm is None else self.history_norm.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "config": asdict(self.config),
            "log": self.log,
            "eval_log": self.eval_log,
        }

    def save_checkpoint(self, path: str | None = None) -> str:
        """Write a checkpoint atomically (temp file + rename; rank 0 writes, every rank must call).
        Default path: ``ckpt_dir/step_{step:08d}.pt``. Returns the path."""
        if path is None:
            if not self.config.ckpt_dir:
                raise ValueError("path is required when config.ckpt_dir is not set")
            path = os.path.join(self.config.ckpt_dir, f"step_{self.step:08d}.pt")
        state = self.state_dict()
        if self.dist.is_main:
            atomic_write(path, lambda tmp: torch.save(state, tmp))
        if self.dist.world_size > 1:
            torch.distributed.barrier()
        return path

    def load_checkpoint(self, path: str) -> None:
        """Restore model, HER norm, optimizer, scheduler, step, logs and this rank's RNG states.
        Checkpoints are pickles: load only files you trust."""
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        if self.history_norm is not None and state["history_norm"] is not None:
            self.history_norm.load_state_dict(state["history_norm"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.log, self.eval_log = list(state["log"]), list(state["eval_log"])
        rng = state["rng"]
        _set_rng_state(rng[self.dist.rank] if len(rng) == self.dist.world_size else rng[0])

    @staticmethod
    def latest_checkpoint(ckpt_dir: str) -> str | None:
        """The ``step_*.pt`` file with the highest step in ``ckpt_dir`` (None if there is none)."""
        files = sorted(glob.glob(os.path.join(ckpt_dir, "step_*.pt")))
        return files[-1] if files else None
