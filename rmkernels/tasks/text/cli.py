"""``rmk text ...``: train, make problem files, evaluate and demo the arithmetic revision models."""
from __future__ import annotations

import argparse


def _cmd_train(args) -> int:
    from rmkernels.tasks.text.train import run

    return run(args)


def _cmd_make_problems(args) -> int:
    from rmkernels.tasks.text.problems import generate_problems, read_problems, write_problems

    exclude = read_problems(args.exclude)[0] if args.exclude else ()
    exprs = generate_problems(args.split, args.n, args.seed, exclude=exclude)
    write_problems(args.out, exprs)
    print(f"wrote {len(exprs)} {args.split} problems to {args.out}")
    return 0


def _systems(args) -> list:
    """``[(name, checkpoint variant, sampler)]`` selected by ``--variant`` / ``--sampler``."""
    from rmkernels.tasks.text.evaluate import SYSTEMS, system_name

    if args.variant and args.sampler:
        pairs = [(args.variant, args.sampler)]
    elif args.variant:
        pairs = [(args.variant, "low_confidence" if args.variant == "base" else "rm")]
    elif args.sampler:
        pairs = [vs for vs in SYSTEMS.values() if vs[1] == args.sampler]
    else:
        pairs = list(SYSTEMS.values())
    return [(system_name(v, s), v, s) for v, s in pairs]


def _cmd_eval(args) -> int:
    import datetime
    import json
    import os
    import platform
    import sys
    import time

    import torch

    from rmkernels.tasks.text.checkpoint import load_checkpoint, shipped
    from rmkernels.tasks.text.evaluate import DEFAULT_K, DEFAULT_PROBLEMS, TITLES, evaluate_system, load_problems
    from rmkernels.tasks.text.metrics import markdown_table, ordering, ordering_table
    from rmkernels._utils import atomic_write

    if args.threads:
        torch.set_num_threads(args.threads)
    exprs, values = load_problems(args.problems, args.limit)
    systems = _systems(args)
    ks = [args.tokens_per_step] if args.tokens_per_step else list(DEFAULT_K)
    cache, rows, correct, answers = {}, [], {}, {}
    t0 = time.perf_counter()
    for name, variant, sampler in systems:
        path = args.checkpoint if args.checkpoint else os.path.join(args.checkpoint_dir, variant) if args.checkpoint_dir \
            else shipped(variant)
        if path not in cache:
            cache[path] = load_checkpoint(path)
        for k in ks:
            m, ans, cor, _ = evaluate_system(variant, sampler, k, exprs, values, steps=args.steps, loaded=cache[path],
                                             batch_size=args.batch_size, kernels=args.kernels,
                                             remask_threshold=args.remask_threshold)
            rows.append((name, k, m))
            correct[(name, k)], answers[(name, k)] = cor, ans
            print(f"{name} K={k}: accuracy {m['accuracy_pct']:.1f}%, replay {m['replay_pct']:.2f}%, "
                  f"re-masks {m['remasks_per_problem']:.2f}, calls {m['mean_calls']:.2f}, {m['seconds']:.1f} s", flush=True)
    wall = time.perf_counter() - t0
    table = markdown_table(rows, TITLES)
    source = args.problems or DEFAULT_PROBLEMS
    print(f"\n{len(exprs)} problems from {source} ({wall:.1f} s, {torch.get_num_threads()} threads)\n\n{table}")
    rel = ordering(correct)
    if rel:
        order = ordering_table(rel, TITLES)
        table += "\n\n" + order
        print("\nthe published ordering, paired over these problems (right minus left)\n\n" + order)
    if args.json:
        doc = {"problems": source, "n": len(exprs), "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "threads": torch.get_num_threads(),
               "wall_s": round(wall, 2), "command": " ".join(sys.argv),
               "results": [dict(m, system=n) for n, _, m in rows], "ordering": rel, "table": table,
               "answers": {f"{n}@K{k}": a for (n, k), a in answers.items()}}
        text = json.dumps(doc, indent=2) + "\n"

        def write(tmp):
            with open(tmp, "w") as f:
                f.write(text)

        atomic_write(args.json, write)
        print(f"wrote {args.json}")
    if args.predictions:
        key = ("full", 4) if ("full", 4) in answers else list(answers)[-1]
        text = "".join(a + "\n" for a in answers[key])

        def write_pred(tmp):
            with open(tmp, "w") as f:
                f.write(text)

        atomic_write(args.predictions, write_pred)
        print(f"wrote {args.predictions} ({key[0]}, K={key[1]}: one graded answer a line, empty when none parsed)")
    return 0


def _cmd_demo(args) -> int:
    import torch

    from rmkernels.tasks.text.checkpoint import load_checkpoint, shipped
    from rmkernels.tasks.text.data import target_ids
    from rmkernels.tasks.text.demo import run_demo
    from rmkernels.tasks.text.evaluate import TITLES, decode_config, system_name
    from rmkernels.tasks.text.problems import parse_expression

    try:
        parse_expression(args.expression)
    except ValueError as e:
        raise SystemExit(f"--expression: {e}") from None
    variant = args.variant or "full"
    sampler = args.sampler or ("low_confidence" if variant == "base" else "rm")
    model, norm, meta = load_checkpoint(args.checkpoint or shipped(variant))
    cfg = decode_config(meta, sampler, args.tokens_per_step, args.steps, args.remask_threshold)
    from rmkernels.tasks.text.evaluate import decode_problems  # noqa: F401  (same path as eval)
    from rmkernels.decode import generate
    from rmkernels.tasks.text.data import GEN_LENGTH, prompt_ids
    from rmkernels.tasks.text.tokenizer import MASK_ID, PAD_ID

    p = torch.from_numpy(prompt_ids([args.expression]))
    out = generate(model, p, cfg, mask_id=MASK_ID, gen_length=GEN_LENGTH, pad_id=PAD_ID,
                   history_norm=norm if cfg.history_steps else None, kernels=args.kernels)
    traj = out.trajectory[:, 0, p.shape[1]:]
    name = system_name(variant, sampler)
    run_demo(args.expression, traj, target_ids([args.expression])[0], delay=args.delay,
             color=False if args.no_color else None,
             title=f"{TITLES.get(name, name)}, K = {args.tokens_per_step} tokens per model call")
    return 0


def add_text_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``rmk text`` and its sub-commands on the ``rmk`` sub-parser collection."""
    from rmkernels.tasks.text.evaluate import CHECKPOINTS, DEFAULT_REMASK_THRESHOLD, SAMPLERS
    from rmkernels.tasks.text.problems import SPLITS
    from rmkernels.tasks.text.train import build_parser

    p = subparsers.add_parser("text", help="arithmetic revision (written work): train, evaluate, demo")
    sub = p.add_subparsers(dest="text_command", required=True)

    t = sub.add_parser("train", help="pretrain the base MDM / post-train the RM variants / the whole recipe")
    build_parser(t)
    t.set_defaults(func=_cmd_train)

    m = sub.add_parser("make-problems", help="write a problem file (<expression>\\t<value> per line)")
    m.add_argument("--split", choices=SPLITS, default="test")
    m.add_argument("--n", type=int, default=1000)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--exclude", default=None, help="a problem file whose expressions are left out")
    m.add_argument("--out", required=True)
    m.set_defaults(func=_cmd_make_problems)

    def common(q):
        q.add_argument("--variant", choices=CHECKPOINTS, default=None, help="checkpoint (default: all / full)")
        q.add_argument("--sampler", choices=SAMPLERS, default=None,
                       help="default: low_confidence for base, rm for the RM variants")
        q.add_argument("--steps", type=int, default=None,
                       help="model calls per problem at most (default: ceil(52 / K), twice that for re-masking samplers)")
        q.add_argument("--checkpoint", default=None, help="a checkpoint directory instead of the shipped one")
        q.add_argument("--kernels", default="auto", help="impl of the decoder's ops (auto, reference, ...)")
        q.add_argument("--remask-threshold", type=float, default=DEFAULT_REMASK_THRESHOLD,
                       help="p(token) threshold of the confidence_remask sampler")

    e = sub.add_parser("eval", help="decode problems; accuracy, replay %%, re-masks, model calls, wall time")
    e.add_argument("--problems", default=None, help="problem file (default: the shipped 1000 test problems)")
    common(e)
    e.add_argument("--tokens-per-step", type=int, default=None, help="K (default: 1, 2, 4 and 8)")
    e.add_argument("--checkpoint-dir", default=None, help="a folder of checkpoint directories base/, rm/, ...")
    e.add_argument("--predictions", default=None,
                   help="write one graded answer a line (empty: none parsed); the full model at K=4 when evaluated")
    e.add_argument("--json", default=None, help="write every metric, the ordering and the tables as JSON")
    e.add_argument("--limit", type=int, default=None, help="only the first N problems")
    e.add_argument("--batch-size", type=int, default=500)
    e.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    e.set_defaults(func=_cmd_eval)

    d = sub.add_parser("demo", help="show one expression being decoded step by step")
    d.add_argument("--expression", default="37*4+129-58")
    common(d)
    d.add_argument("--tokens-per-step", type=int, default=4, help="K, tokens revealed per model call")
    d.add_argument("--delay", type=float, default=0.3, help="seconds between steps")
    d.add_argument("--no-color", action="store_true")
    d.set_defaults(func=_cmd_demo)
    return p


__all__ = ["add_text_parser"]
