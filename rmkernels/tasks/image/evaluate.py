"""Decoding digit images with the shipped models, and scoring them (repair, edit, inpaint).

Systems (``--variant``):

| name | model | canvas | decoding |
|---|---|---|---|
| ``rm`` / ``rm_hist`` / ``rm_hist_decay`` / ``full`` | the RM variant | the input | per task (below), the variant's History Reference |
| ``base_conf_remask`` | base MDM | the input | as the variants, sampler ``confidence_remask`` (re-mask visible pixels with ``p < 0.4``) |
| ``base`` | base MDM | the input | as the variants, no re-masking (``low_confidence``) |
| ``regen`` | the evaluated variant | every pixel masked, same condition | cosine schedule, RM rule |
| ``base_regen`` | base MDM | every pixel masked, same condition | cosine schedule, no re-masking |

Per task (the condition slot is always fixed):

* repair: every pixel editable; two-phase decode (docs/spec.md §10): phase 1 re-masks pixels with
  ``p(mask) > 0.7``, then the RM loop with every confident candidate revealed at once;
* edit: every pixel editable, the target class in the slot; two-phase decode (docs/spec.md §10): phase 1
  re-masks pixels with ``p(mask) > 0.3`` under the target class, phase 2 unmasks on a cosine
  schedule with the RM rule;
* inpaint: only the masked region editable (nothing outside can change); cosine schedule, RM rule.

Checkpoints ship in ``rmkernels/tasks/image/assets/image_<name>.safetensors`` (+ ``.json``).
"""
from __future__ import annotations

import os
import time
from importlib.resources import files

import numpy as np
import torch

from rmkernels.models.checkpoint import load_checkpoint
from rmkernels.tasks.image.data import MASK_ID, Instances, make_instances, read_instances
from rmkernels.tasks.image.metrics import beyond, edit_metrics, inpaint_metrics, paired, repair_metrics

VARIANT_NAMES = ("rm", "rm_hist", "rm_hist_decay", "full")
BASELINES = {"repair": ("base_conf_remask", "base_regen"), "edit": ("regen", "base_regen"), "inpaint": ("base",)}
SYSTEMS = VARIANT_NAMES + ("base_conf_remask", "base", "regen", "base_regen")
TITLES = {
    "rm": "RM", "rm_hist": "RM + history (no rotation)", "rm_hist_decay": "RM + history + decay",
    "full": "RM + history + decay + rotation (full)", "base_conf_remask": "base MDM + confidence re-mask",
    "base": "base MDM, no re-mask", "regen": "regenerate from scratch (same model)",
    "base_regen": "base MDM, regenerate from scratch",
}
ASSETS = str(files("rmkernels.tasks.image") / "assets")
# decoding defaults, chosen on the val split by the rules of experiments/image/decode_sweep.py
# (results/image/decode_sweep_val.json, docs/image.md)
STEPS = {"repair": 12, "edit": 16, "inpaint": 12, "regen": 16}
PHASE1_THRESHOLD = {"repair": 0.7, "edit": 0.3}
PHASE1_STEPS = 8
REMASK_THRESHOLD = 0.4


def checkpoint_path(name: str, checkpoint_dir: str | None = None) -> str:
    """The checkpoint file of a model name (``base`` or a variant)."""
    if name not in VARIANT_NAMES and name != "base":
        raise ValueError(f"model must be 'base' or one of {VARIANT_NAMES}, got {name!r}")
    return os.path.join(checkpoint_dir or ASSETS, f"image_{name}.safetensors")


def system_model(system: str, variant: str = "full") -> str:
    """Which checkpoint a system decodes with (``regen`` uses the evaluated ``variant``)."""
    if system not in SYSTEMS:
        raise ValueError(f"variant must be one of {SYSTEMS}, got {system!r}")
    if system in VARIANT_NAMES:
        return system
    return variant if system == "regen" else "base"


def decode_config(task: str, system: str, meta: dict, steps: int | None = None, **overrides):
    """The :class:`~rmkernels.DecodeConfig` of a system on a task (see the module docstring)."""
    from rmkernels.decode import DecodeConfig

    hist = meta.get("decode", {})
    kw = dict(history_steps=int(hist.get("history_steps", 0)), history_decay=float(hist.get("history_decay", 0.0)),
              history_rotate=bool(hist.get("history_rotate", False)), fill_remaining=True, record_trajectory=True,
              check_every=2, max_remask=-1)
    if system in ("regen", "base_regen"):
        kw.update(steps=steps or STEPS["regen"], schedule="cosine",
                  sampler="rm" if system == "regen" else "low_confidence")
    elif task == "repair":
        kw.update(steps=steps or STEPS["repair"], reveal="all", phase1_threshold=PHASE1_THRESHOLD["repair"])
    elif task == "edit":
        kw.update(steps=steps or STEPS["edit"], schedule="cosine", phase1_threshold=PHASE1_THRESHOLD["edit"],
                  phase1_steps=PHASE1_STEPS)
    elif task == "inpaint":
        kw.update(steps=steps or STEPS["inpaint"], schedule="cosine")
    else:
        raise ValueError(f"task must be repair, edit or inpaint, got {task!r}")
    if system == "base_conf_remask":
        kw.update(sampler="confidence_remask", remask_threshold=REMASK_THRESHOLD, phase1_threshold=None)
    elif system == "base":
        kw.update(sampler="low_confidence", phase1_threshold=None)
    if system in ("base_conf_remask", "base", "base_regen"):
        kw.update(history_steps=0, history_decay=0.0, history_rotate=False)
    kw.update(overrides)
    return DecodeConfig(**kw)


def canvas_of(task: str, system: str, inst: Instances):
    """``(tokens [N, 65], prompt_mask [N, 65])``: the starting canvas and its fixed positions."""
    tokens = inst.tokens()
    fixed = np.zeros(tokens.shape, dtype=bool)
    fixed[:, 0] = True  # the condition slot
    if system in ("regen", "base_regen"):
        tokens[:, 1:] = MASK_ID
    elif task == "inpaint":
        fixed[:, 1:] = inst.inputs != MASK_ID
    return torch.from_numpy(tokens), torch.from_numpy(fixed)


@torch.no_grad()
def decode(model, history_norm, tokens, fixed, config, batch_size: int = 512, kernels: str = "auto"):
    """Decode canvases ``[N, 65]`` in chunks; returns ``(pixels [N, 64], steps [N], trajectory
    [T + 1, N, 65] or None)``."""
    from rmkernels.decode import generate

    finals, steps, trajs = [], [], []
    for i in range(0, tokens.shape[0], batch_size):
        out = generate(model, tokens[i : i + batch_size], config, mask_id=MASK_ID, prompt_mask=fixed[i : i + batch_size],
                       history_norm=history_norm if config.history_steps else None, kernels=kernels)
        finals.append(out.sequences)
        steps.append(out.steps)
        trajs.append(out.trajectory)
    traj = None
    if config.record_trajectory:
        T = max(t.shape[0] for t in trajs)
        traj = torch.cat([torch.cat([t, t[-1:].expand(T - t.shape[0], -1, -1)]) for t in trajs], dim=1)
    return torch.cat(finals)[:, 1:].numpy(), torch.cat(steps).numpy(), traj


def score(task: str, inst: Instances, final) -> tuple[dict, dict]:
    """The task's metrics of ``final [N, 64]`` (:mod:`rmkernels.tasks.image.metrics`)."""
    if task == "repair":
        return repair_metrics(inst.inputs, inst.reference, final, inst.label)
    if task == "edit":
        return edit_metrics(inst.reference, final, inst.label)
    return inpaint_metrics(inst.inputs, inst.reference, final, inst.label)


class ModelCache:
    """Loads each checkpoint once: ``cache[name] -> (model, history_norm, meta)``."""

    def __init__(self, checkpoint_dir: str | None = None, overrides: dict | None = None):
        self.dir, self.overrides, self._held = checkpoint_dir, dict(overrides or {}), {}

    def __getitem__(self, name: str):
        if name not in self._held:
            path = self.overrides.get(name) or checkpoint_path(name, self.dir)
            if not os.path.exists(path):
                raise ValueError(f"no checkpoint for {name!r} at {path}: train it "
                                 f"with `rmk image train variant --variant {name} ...` and pass --checkpoint")
            self._held[name] = load_checkpoint(path)
        return self._held[name]


def evaluate_system(task: str, system: str, inst: Instances, models: ModelCache, *, variant: str = "full",
                    steps: int | None = None, batch_size: int = 512, kernels: str = "auto", **overrides):
    """Decode and score one system; returns ``(metrics, per-instance arrays, final [N, 64], trajectory)``."""
    model, norm, meta = models[system_model(system, variant)]
    cfg = decode_config(task, system, meta, steps, **overrides)
    tokens, fixed = canvas_of(task, system, inst)
    t0, c0 = time.perf_counter(), time.process_time()
    final, n_steps, traj = decode(model, norm, tokens, fixed, cfg, batch_size, kernels)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    m, per = score(task, inst, final)
    m.update(seconds=round(seconds, 2), cpu_seconds=round(cpu, 2), mean_steps=float(n_steps.mean()),
             model=system_model(system, variant))
    return m, per, final, traj


PAIRED = {  # task -> (per-instance metric, which way is better, title)
    "repair": (("mae_corrupted", "lower", "MAE on corrupted pixels"), ("abs_error", "lower", "absolute error / image"),
               ("classifier_ok", "higher", "classifier correct")),
    "edit": (("target_ok", "higher", "target class"), ("changed", "lower", "pixels changed")),
    "inpaint": (("mae_region", "lower", "MAE in the region"), ("classifier_ok", "higher", "classifier correct")),
}


def comparisons(task: str, system: str, per: dict, z: float = 2.0) -> list:
    """Paired differences (system minus baseline) with SE and a verdict, for every baseline in ``per``."""
    out = []
    for base in BASELINES[task]:
        if base not in per or system not in per:
            continue
        for key, better, title in PAIRED[task]:
            d = paired(per[base][key], per[system][key])
            d.update(system=system, baseline=base, metric=key, title=title, better=better,
                     verdict=beyond(d["diff"], d["se"], better, z))
            out.append(d)
    return out


def goals(task: str, system: str, results: dict, comps: list, seconds_per_1000: float | None,
          cpu_per_1000: float | None = None) -> list:
    """The issue's goals as ``(goal, measured, verdict)`` lines. The timing goal is judged on the
    process CPU time when given (on a shared machine the wall time also counts other jobs' load;
    with one torch thread, CPU time is the wall time the decode takes on a free core)."""
    m = results[system]
    lines = []
    ok = lambda c: "met" if c else "missed"  # noqa: E731
    if task == "repair":
        lines.append(("MAE on corrupted pixels reduced by >= 75%",
                      f"{m['mae_before']:.2f} -> {m['mae_after']:.2f} ({m['mae_reduction_pct']:.1f}% less)",
                      ok(m["mae_reduction_pct"] >= 75.0)))
        lines.append((">= 99.5% of uncorrupted pixels unchanged", f"{m['preservation_pct']:.2f}%",
                      ok(m["preservation_pct"] >= 99.5)))
        gap = m["classifier_clean_pct"] - m["classifier_pct"]
        lines.append(("classifier accuracy within 1 point of clean images",
                      f"{m['classifier_pct']:.1f}% vs {m['classifier_clean_pct']:.1f}% clean ({gap:+.1f} points below)",
                      ok(gap <= 1.0)))
        for base in BASELINES["repair"]:
            cs = [c for c in comps if c["baseline"] == base and c["metric"] in ("mae_corrupted", "abs_error")]
            if cs:
                txt = "; ".join(f"{c['title']} {c['diff']:+.3f} (SE {c['se']:.3f})" for c in cs)
                lines.append((f"better than {base} beyond 2 paired SE", txt,
                              ok(all(c["verdict"] == "better" for c in cs))))
    elif task == "edit" and "regen" in results:
        ratio = m["changed_per_image"] / max(results["regen"]["changed_per_image"], 1e-9)
        lines.append(("target-class accuracy >= 90%", f"{m['target_pct']:.1f}%", ok(m["target_pct"] >= 90.0)))
        lines.append(("changes <= 60% as many pixels as regenerating from scratch",
                      f"{m['changed_per_image']:.1f} vs {results['regen']['changed_per_image']:.1f} per image "
                      f"({100 * ratio:.0f}%)", ok(ratio <= 0.6)))
    elif task == "inpaint":
        lines.append(("nothing outside the region changed", f"{m['changed_outside']} pixels", ok(m["changed_outside"] == 0)))
    if seconds_per_1000 is not None:
        judged = seconds_per_1000 if cpu_per_1000 is None else cpu_per_1000
        txt = f"{seconds_per_1000:.1f} s wall" + ("" if cpu_per_1000 is None else f", {cpu_per_1000:.1f} s CPU")
        lines.append(("evaluating 1000 instances of one system < 30 s", txt, ok(judged < 30.0)))
    return lines


COLUMNS = {
    "repair": (("precision_pct", "precision %", "{:.1f}"), ("recall_pct", "recall %", "{:.1f}"),
               ("mae_before", "MAE before", "{:.2f}"), ("mae_after", "MAE after", "{:.2f}"),
               ("mae_reduction_pct", "MAE reduction %", "{:.1f}"), ("preservation_pct", "preserved %", "{:.2f}"),
               ("exact_pct", "exact %", "{:.1f}"), ("classifier_pct", "classifier %", "{:.1f}"),
               ("classifier_clean_pct", "classifier clean %", "{:.1f}"), ("mean_steps", "steps", "{:.2f}"),
               ("cpu_seconds", "CPU s", "{:.1f}")),
    "edit": (("target_pct", "target class %", "{:.1f}"), ("changed_per_image", "pixels changed / image", "{:.1f}"),
             ("mean_steps", "steps", "{:.2f}"), ("cpu_seconds", "CPU s", "{:.1f}")),
    "inpaint": (("classifier_pct", "classifier %", "{:.1f}"), ("classifier_clean_pct", "classifier clean %", "{:.1f}"),
                ("mae_region", "MAE in region", "{:.2f}"), ("changed_outside", "changed outside", "{}"),
                ("mean_steps", "steps", "{:.2f}"), ("cpu_seconds", "CPU s", "{:.1f}")),
}


def markdown(task: str, results: dict, comps: list, goal_lines: list) -> str:
    cols = COLUMNS[task]
    lines = ["| system | " + " | ".join(t for _, t, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    for name, m in results.items():
        cells = ["-" if m.get(k) is None else f.format(m[k]) for k, _, f in cols]
        lines.append(f"| {TITLES.get(name, name)} | " + " | ".join(cells) + " |")
    if comps:
        lines += ["", "| system - baseline | metric | difference (paired SE) | verdict |", "|---|---|---|---|"]
        for c in comps:
            lines.append(f"| {c['system']} - {c['baseline']} | {c['title']} ({c['better']} is better) | "
                         f"{c['diff']:+.3f} ({c['se']:.3f}) | {c['verdict']} |")
    if goal_lines:
        lines += ["", "| goal | measured | verdict |", "|---|---|---|"]
        lines += [f"| {g} | {v} | {ok} |" for g, v, ok in goal_lines]
    return "\n".join(lines)


def load_instances(task: str, path: str | None = None, split: str = "test", n: int | None = None,
                   seed: int | None = None) -> Instances:
    """Instances from a file, else generated from ``split`` (deterministic, :func:`make_instances`)."""
    from rmkernels.tasks.image.data import DEFAULT_COUNT, DEFAULT_SEED

    if path:
        inst = read_instances(path, task)
        if n is not None:
            inst = inst.subset(slice(0, n))
        return inst
    return make_instances(task, split, n or DEFAULT_COUNT, DEFAULT_SEED if seed is None else seed)


__all__ = [
    "ASSETS", "BASELINES", "ModelCache", "STEPS", "SYSTEMS", "TITLES", "VARIANT_NAMES", "canvas_of", "checkpoint_path",
    "comparisons", "decode", "decode_config", "evaluate_system", "goals", "load_instances", "markdown", "score",
    "system_model",
]
