"""Where repair misses: detection recall and the share of the remaining error by corruption size
|corrupted - clean| and by the clean pixel's kind (background = level 0, ink > 0), test split.

    PYTHONPATH=$PWD python experiments/image/repair_breakdown.py --variant full \
        --out results/image/repair_breakdown_full.json

Prints one row per bin: corrupted pixels, % detected (changed), % restored exactly, the bin's share
of the MAE before and after. Decoding as ``rmk image eval --task repair`` (same instances, same
DecodeConfig).
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

from rmkernels.tasks.image.evaluate import SYSTEMS, ModelCache, evaluate_system, load_instances

BINS = ((1, 2), (3, 4), (5, 8), (9, 16))


def breakdown(inputs, reference, final) -> list:
    """Rows of ``{"bin", "pixels", "detected_pct", "restored_pct", "share_before_pct", "share_after_pct"}``."""
    x, ref, y = (np.asarray(a).astype(np.int64) for a in (inputs, reference, final))
    corrupt = x != ref
    delta = np.abs(x - ref)
    after = np.abs(np.minimum(y, 16) - ref) * corrupt
    tot_b, tot_a = max(int((delta * corrupt).sum()), 1), max(int(after.sum()), 1)
    rows = []
    sel_all = [(f"|delta| {lo}-{hi}", corrupt & (delta >= lo) & (delta <= hi)) for lo, hi in BINS]
    sel_all += [("clean pixel background (0)", corrupt & (ref == 0)), ("clean pixel ink (>0)", corrupt & (ref > 0)),
                ("all", corrupt)]
    for name, sel in sel_all:
        n = int(sel.sum())
        rows.append({"bin": name, "pixels": n,
                     "detected_pct": round(100.0 * float((sel & (y != x)).sum()) / max(n, 1), 1),
                     "restored_pct": round(100.0 * float((sel & (y == ref)).sum()) / max(n, 1), 1),
                     "share_before_pct": round(100.0 * float((delta * sel).sum()) / tot_b, 1),
                     "share_after_pct": round(100.0 * float((after * sel).sum()) / tot_a, 1)})
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--variant", default="full", choices=SYSTEMS)
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    inst = load_instances("repair")
    _, _, final, _ = evaluate_system("repair", a.variant, inst, ModelCache(a.checkpoint_dir), variant=a.variant)
    rows = breakdown(inst.inputs, inst.reference, final)
    print("| corrupted pixels | n | detected % | restored % | share of MAE before % | share of MAE after % |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['bin']} | {r['pixels']} | {r['detected_pct']} | {r['restored_pct']} | "
              f"{r['share_before_pct']} | {r['share_after_pct']} |")
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump({"variant": a.variant, "instances": len(inst), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
