"""``rmk image ...``: train, make instance files, evaluate and demo the digit-image revision models."""
from __future__ import annotations

import argparse


def _cmd_train(args) -> int:
    from rmkernels.tasks.image.train import run

    return run(args)


def _cmd_make(args) -> int:
    from rmkernels.tasks.image.data import make_instances, write_instances

    inst = make_instances(args.task, args.split, args.n, args.seed)
    write_instances(args.out, inst)
    print(f"wrote {len(inst)} {args.task} instances of the {args.split} split to {args.out}")
    return 0


def _checked(command):
    """Bad input (a missing checkpoint, a malformed instance file) ends the command with its message."""
    def run(args) -> int:
        try:
            return command(args)
        except ValueError as e:
            raise SystemExit(f"rmk image {args.image_command}: {e}") from None

    return run


def _models(args):
    from rmkernels.tasks.image.evaluate import ModelCache

    overrides = {}
    if args.checkpoint:
        overrides[args.variant] = args.checkpoint
    if getattr(args, "base_checkpoint", None):
        overrides["base"] = args.base_checkpoint
    return ModelCache(args.checkpoint_dir, overrides)


def _cmd_eval(args) -> int:
    import datetime
    import json
    import time

    import torch

    from rmkernels.tasks.image.data import write_predictions
    from rmkernels.tasks.image.evaluate import (
        BASELINES, comparisons, evaluate_system, goals, load_instances, markdown)
    from rmkernels.tasks.sudoku.data import write_lines

    if args.threads:
        torch.set_num_threads(args.threads)
    inst = load_instances(args.task, args.inputs, args.split, args.limit, args.seed)
    models = _models(args)
    systems = [args.variant] + ([] if args.no_baselines else [b for b in BASELINES[args.task] if b != args.variant])
    if args.systems:
        systems = [s for s in args.systems.split(",") if s]
    results, per, finals = {}, {}, {}
    t_all = time.perf_counter()
    for name in systems:
        m, p, final, _ = evaluate_system(args.task, name, inst, models, variant=args.variant, steps=args.steps,
                                         batch_size=args.batch_size, kernels=args.kernels)
        results[name], per[name], finals[name] = m, p, final
        print(f"{name}: {m['seconds']:.1f} s", flush=True)
    wall = time.perf_counter() - t_all
    comps = []
    for name in systems:
        if name not in BASELINES[args.task]:
            comps += comparisons(args.task, name, per)
    main = systems[0]
    per_1000 = results[main]["seconds"] * 1000.0 / len(inst)
    cpu_1000 = results[main]["cpu_seconds"] * 1000.0 / len(inst)
    goal_lines = goals(args.task, main, results, [c for c in comps if c["system"] == main], per_1000, cpu_1000)
    table = markdown(args.task, results, comps, goal_lines)
    src = args.inputs or f"{len(inst)} {args.task} instances generated from the {args.split} split"
    head = (f"{args.task}: {src} ({wall:.1f} s, {torch.get_num_threads()} threads, "
            f"{datetime.date.today().isoformat()})")
    print(f"\n{head}\n\n{table}")
    if args.json:
        doc = {"task": args.task, "inputs": src, "n": len(inst), "variant": args.variant, "systems": systems,
               "date": datetime.date.today().isoformat(), "threads": torch.get_num_threads(), "wall_s": round(wall, 2),
               "seconds_per_1000": round(per_1000, 2), "cpu_seconds_per_1000": round(cpu_1000, 2), "results": results, "comparisons": comps,
               "goals": [{"goal": g, "measured": v, "verdict": ok} for g, v, ok in goal_lines], "table": table}
        write_lines(args.json, [json.dumps(doc, indent=2)])
        if args.json.endswith(".json"):
            write_lines(args.json[: -len(".json")] + ".md", [f"{head}\n\n{table}"])
        print(f"wrote {args.json}")
    if args.predictions:
        write_predictions(args.predictions, finals[main])
        print(f"wrote {args.predictions} ({main})")
    return 0


def _cmd_demo(args) -> int:
    from rmkernels.tasks.image.data import MASK_ID
    from rmkernels.tasks.image.demo import render_demo
    from rmkernels.tasks.image.evaluate import TITLES, evaluate_system, load_instances
    from rmkernels.tasks.image.metrics import classify

    inst = load_instances(args.task, args.inputs, args.split, None, args.seed)
    if not 0 <= args.index < len(inst):
        raise SystemExit(f"--index must be in [0, {len(inst)}), got {args.index}")
    one = inst.subset(slice(args.index, args.index + 1))
    m, _, final, traj = evaluate_system(args.task, args.variant, one, _models(args), variant=args.variant,
                                        steps=args.steps, kernels=args.kernels)
    x, src, y = one.inputs[0], one.reference[0], final[0]
    pixels = traj[:, 0, 1:].numpy()
    got = int(classify(y[None])[0])
    corrupted = (x != src) & (x != MASK_ID) if args.task == "repair" else None
    if args.task == "edit":
        input_label = f"input, class token {int(one.cond[0])}"
    elif args.task == "inpaint":
        input_label = f"input, {int((x == MASK_ID).sum())} px masked"
    else:
        input_label = f"input, {int(corrupted.sum())} px corrupted"
    result_label = f"result: reads as {got}"
    if args.task == "repair":
        result_label += f", {int((y != src).sum())} px off"
    title = f"{args.task} #{args.index} - {TITLES.get(args.variant, args.variant)}"
    if one.label[0] >= 0:
        title += f" - {'target' if args.task == 'edit' else 'true'} class {int(one.label[0])}"
    img = render_demo(src, x, y, pixels, title=title, input_label=input_label, result_label=result_label,
                      corrupted=corrupted, scale=args.scale, source_label=f"source, reads as {int(classify(src[None])[0])}")
    img.save(args.out)
    print(f"{title}: {m['mean_steps']:.0f} steps, result classified as {got}; "
          f"{int((y != x).sum())} pixels changed; wrote {args.out} ({img.width}x{img.height})")
    return 0


def add_image_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``rmk image`` and its sub-commands on the ``rmk`` sub-parser collection."""
    from rmkernels.tasks.image.data import DEFAULT_COUNT, DEFAULT_SEED, SPLITS, TASKS
    from rmkernels.tasks.image.evaluate import SYSTEMS
    from rmkernels.tasks.image.train import build_parser

    p = subparsers.add_parser("image", help="digit-image revision (repair, edit, inpaint): train, evaluate, demo")
    sub = p.add_subparsers(dest="image_command", required=True)

    t = sub.add_parser("train", help="pretrain the base MDM / post-train the RM variants / the whole recipe")
    build_parser(t)
    t.set_defaults(func=_cmd_train)

    m = sub.add_parser("make-instances", help="write an instance file (<input>\\t<reference>\\t<label>\\t<condition>)")
    m.add_argument("--task", choices=TASKS, required=True)
    m.add_argument("--split", choices=SPLITS, default="test")
    m.add_argument("--n", type=int, default=DEFAULT_COUNT)
    m.add_argument("--seed", type=int, default=DEFAULT_SEED)
    m.add_argument("--out", required=True)
    m.set_defaults(func=_cmd_make)

    def common(q):
        q.add_argument("--task", choices=TASKS, required=True)
        q.add_argument("--variant", choices=SYSTEMS, default="full", help="system to decode with (default: full)")
        q.add_argument("--inputs", default=None, help="instance file (default: generated from --split)")
        q.add_argument("--split", choices=SPLITS, default="test")
        q.add_argument("--seed", type=int, default=None, help="seed of generated instances")
        q.add_argument("--checkpoint", default=None, help="a .safetensors file for --variant instead of the shipped one")
        q.add_argument("--base-checkpoint", default=None, help="a .safetensors file for the base MDM")
        q.add_argument("--checkpoint-dir", default=None, help="folder of image_<name>.safetensors files")
        q.add_argument("--steps", type=int, default=None, help="decoding step budget (default: per task)")
        q.add_argument("--kernels", default="auto", help="impl of the decoder's ops (auto, reference, ...)")

    e = sub.add_parser("eval", help="decode instances and report the task's metrics against the baselines")
    common(e)
    e.add_argument("--limit", type=int, default=None, help="only the first N instances (generated: N instead of 1080)")
    e.add_argument("--systems", default=None, help=f"comma-separated systems instead of --variant + baselines "
                                                   f"({', '.join(SYSTEMS)})")
    e.add_argument("--no-baselines", action="store_true")
    e.add_argument("--json", default=None, help="write the metrics as JSON (and the table next to it as .md)")
    e.add_argument("--predictions", default=None, help="write each result (64 levels) per line, in input order")
    e.add_argument("--batch-size", type=int, default=512)
    e.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    e.set_defaults(func=_checked(_cmd_eval))

    d = sub.add_parser("demo", help="draw one instance's decoding as a PNG")
    common(d)
    d.add_argument("--index", type=int, default=0)
    d.add_argument("--out", required=True, help="PNG file")
    d.add_argument("--scale", type=int, default=16, help="screen pixels per image pixel")
    d.set_defaults(func=_checked(_cmd_demo))
    return p
