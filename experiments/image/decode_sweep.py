"""Decoding settings of the image tasks, compared on the val split (never the test split).

    PYTHONPATH=$PWD python experiments/image/decode_sweep.py --variant MODEL.safetensors \
        --base BASE.safetensors --n 360 --out results/image/decode_sweep_val.json

Each row: a task, a system and DecodeConfig overrides; prints the task's headline metrics. Rows of
the RM model without a ``phase1_threshold`` decode as the defaults were before this sweep chose
them (``SWEEP_BASE``: repair without phase 1, edit with ``phase1_threshold=0.9``), so a rerun gives
the same rows as results/image/decode_sweep_val.json.

Selection rules (fixed before running them on the shipped full model; the evaluation defaults in
rmkernels/tasks/image/evaluate.py follow them):

* repair: the setting meeting the most of the three repair goals on val (MAE on corrupted pixels
  -75%, >= 99.5% of clean pixels unchanged, classifier within 1 point of the clean images'),
  ties broken by the lower MAE after;
* edit: the highest phase-1 threshold whose target-class accuracy on val is >= 90% (else the one
  with the highest accuracy);
* inpaint: the higher classifier accuracy on val.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from rmkernels.tasks.image.data import make_instances
from rmkernels.tasks.image.evaluate import ModelCache, evaluate_system

GRID = [
    ("repair", "full", {}),
    ("repair", "full", {"steps": 6}),
    ("repair", "full", {"reveal": "topk", "schedule": "cosine", "steps": 8}),
    ("repair", "full", {"reveal": "topk", "phase1_threshold": 0.9, "schedule": "cosine", "steps": 8}),
    ("repair", "full", {"reveal": "topk", "phase1_threshold": 0.5, "schedule": "cosine", "steps": 8}),
    ("repair", "base_conf_remask", {}),
    ("edit", "full", {}),
    ("edit", "full", {"phase1_threshold": 0.7}),
    ("edit", "full", {"phase1_threshold": 0.5}),
    ("edit", "full", {"phase1_threshold": 0.3}),
    ("edit", "regen", {}),
    ("inpaint", "full", {}),
    ("inpaint", "full", {"schedule": None, "reveal": "all"}),
    ("inpaint", "base", {}),
    ("repair", "full", {"rescue_ratio": 0.5, "max_rescues": 2}),
    ("repair", "full", {"rescue_ratio": 0.3, "max_rescues": 2}),
    ("repair", "full", {"rescue_ratio": 0.2, "max_rescues": 2}),
    ("edit", "full", {"phase1_threshold": 0.7, "rescue_ratio": 0.5}),
    ("repair", "base_regen", {}),
    ("edit", "base_regen", {}),
    ("repair", "full", {"phase1_threshold": 0.9}),
    ("repair", "full", {"phase1_threshold": 0.7}),
    ("repair", "full", {"phase1_threshold": 0.8, "reveal": "topk", "schedule": "cosine", "steps": 8}),
    ("repair", "full", {"phase1_threshold": 0.7, "reveal": "topk", "schedule": "cosine", "steps": 8}),
]
SWEEP_BASE = {"repair": {"phase1_threshold": None}, "edit": {"phase1_threshold": 0.9}, "inpaint": {}}
KEYS = {"repair": ("mae_after", "mae_reduction_pct", "preservation_pct", "recall_pct", "precision_pct", "classifier_pct",
                   "classifier_clean_pct"),
        "edit": ("target_pct", "changed_per_image"), "inpaint": ("classifier_pct", "mae_region", "changed_outside")}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--variant", required=True, help="the RM model (decoded as 'full' with its own history settings)")
    p.add_argument("--base", required=True)
    p.add_argument("--n", type=int, default=360)
    p.add_argument("--rows", default="", help="comma-separated row numbers of GRID (default: all)")
    p.add_argument("--out", default=None)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    models = ModelCache(overrides={"full": a.variant, "base": a.base})
    rows = [int(r) for r in a.rows.split(",") if r] or range(len(GRID))
    out = []
    for r in rows:
        task, system, over = GRID[r]
        over = dict(over)
        fixed = {k: v for k, v in SWEEP_BASE[task].items() if k not in over} if system == "full" else {}
        inst = make_instances(task, "val", a.n)
        steps = over.pop("steps", None) if "steps" in over else None
        t0 = time.time()
        m, _, _, _ = evaluate_system(task, system, inst, models, steps=steps, **over, **fixed)
        if steps is not None:
            over["steps"] = steps
        row = {"row": r, "task": task, "system": system, "overrides": over,
               **{k: (round(m[k], 3) if isinstance(m[k], float) else m[k]) for k in KEYS[task]},
               "mean_steps": round(m["mean_steps"], 2), "cpu_s": m["cpu_seconds"], "wall_s": round(time.time() - t0, 1)}
        print(json.dumps(row), flush=True)
        out.append(row)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump({"variant": a.variant, "base": a.base, "n": a.n, "rows": out}, f, indent=1)


if __name__ == "__main__":
    main()
