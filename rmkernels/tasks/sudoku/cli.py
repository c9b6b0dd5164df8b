"""``rmk sudoku ...``: train, make board files, evaluate and demo the Sudoku revision models."""
from __future__ import annotations

import argparse


def _cmd_make_boards(args) -> int:
    from rmkernels.tasks.sudoku.data import make_boards, write_boards

    corrupted, solution = make_boards(args.split, args.n, args.seed, (args.min_corrupt, args.max_corrupt))
    write_boards(args.out, corrupted, solution)
    print(f"wrote {len(corrupted)} {args.split} boards to {args.out}")
    return 0


def _cmd_train(args) -> int:
    from rmkernels.tasks.sudoku.train import run

    return run(args)


def _resolve_system(args):
    """``(system, loaded checkpoint or None)`` of ``--variant`` / ``--checkpoint``."""
    from rmkernels.tasks.sudoku.checkpoint import load_checkpoint

    if args.checkpoint is None:
        return args.variant, None
    loaded = load_checkpoint(args.checkpoint)
    return args.variant or loaded[2].get("variant") or "base_conf_remask", loaded


def _ceiling_table(results: dict) -> str:
    """Exact % split by whether the solution is the unique nearest valid grid (``--ceiling``)."""
    from rmkernels.tasks.sudoku.evaluate import TITLES

    first = next(iter(results.values()))["ceiling"]
    pct = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    lines = [f"best expected exact of any decoder on these boards: {first['ceiling_exact_pct']:.2f}%\n",
             f"| variant | exact % of the ceiling | exact % ({first['unique_boards']} boards, solution the unique "
             f"nearest grid) | exact % ({first['tie_boards']} tied) | exact % ({first['closer_boards']} with a "
             "nearer grid) |", "|---|---|---|---|---|"]
    for name, m in results.items():
        c = m["ceiling"]
        lines.append(f"| {TITLES.get(name, name)} | {c['exact_of_ceiling_pct']:.1f} | {pct(c['exact_unique_pct'])} | "
                     f"{pct(c['exact_tie_pct'])} | {pct(c['exact_closer_pct'])} |")
    return "\n".join(lines)


def _cmd_eval(args) -> int:
    import json
    import time

    import torch
    from tqdm.auto import tqdm

    from rmkernels.tasks.sudoku.data import format_board, write_lines
    from rmkernels.tasks.sudoku.evaluate import (
        DEFAULT_BOARDS, DEFAULT_CEILING, SYSTEMS, TITLES, evaluate_suite, evaluate_system, load_boards)
    from rmkernels.tasks.sudoku.metrics import ablation_ordering, markdown_table, ordering_table

    if args.threads:
        torch.set_num_threads(args.threads)
    corrupted, solution = load_boards(args.boards, args.limit)
    system, loaded = _resolve_system(args)
    kw = dict(steps=args.steps, batch_size=args.batch_size, kernels=args.kernels, remask_threshold=args.remask_threshold,
              rescue_ratio=args.rescue_ratio)
    alt = None
    ceiling = args.ceiling or (DEFAULT_CEILING if args.boards is None else None)
    if ceiling:
        from rmkernels.tasks.sudoku.ceiling import load_alternatives

        alt = load_alternatives(ceiling, corrupted, solution)
    t0 = time.perf_counter()
    n_systems = len(SYSTEMS) if system is None else 1
    bar = tqdm(total=n_systems * len(corrupted), desc="rmk sudoku eval", unit="board", disable=args.quiet,
               dynamic_ncols=True, leave=False)
    with bar:
        if system is None:  # the whole table: baselines and the four variants; predictions of the full model
            results, finals = evaluate_suite(corrupted, solution, SYSTEMS, args.checkpoint_dir, log=tqdm.write,
                                             on_batch=bar.update, **kw)
            final = finals["full"]
        else:
            metrics, final = evaluate_system(system, corrupted, solution, checkpoint_dir=args.checkpoint_dir,
                                             loaded=loaded, on_batch=bar.update, **kw)
            results = {system: metrics}
    wall = time.perf_counter() - t0
    table = markdown_table({TITLES.get(k, k): v for k, v in results.items()})
    print(f"\n{len(corrupted)} boards from {args.boards or DEFAULT_BOARDS} ({wall:.1f} s, "
          f"{torch.get_num_threads()} threads)\n\n{table}")
    if alt is not None:
        from rmkernels.tasks.sudoku.ceiling import exact_by_kind

        finals = finals if system is None else {system: final}
        for name in results:
            results[name]["ceiling"] = exact_by_kind(finals[name], solution, alt)
        split = _ceiling_table(results)
        table += "\n\n" + split
        print("\n" + split)
    ordering = ablation_ordering(finals, solution) if system is None and len(corrupted) > 1 else []
    if ordering:
        order = ordering_table(ordering, TITLES)
        order = (f"the published ablation ordering, paired over these boards (b minus a); the {len(corrupted)} "
                 f"boards are transforms of {ordering[0]['clusters']} seed grids, so the standard errors are "
                 "cluster-robust over seed-grid clusters\n\n" + order)
        table += "\n\n" + order
        print("\n" + order)
    if args.json:
        doc = {"boards": args.boards or DEFAULT_BOARDS, "n": len(corrupted), "steps_budget": args.steps,
               "rescue_ratio": args.rescue_ratio,
               "wall_s": round(wall, 2), "threads": torch.get_num_threads(), "results": results,
               "ablation_ordering": ordering, "table": table}
        write_lines(args.json, [json.dumps(doc, indent=2)])
        print(f"wrote {args.json}")
    if args.predictions:
        write_lines(args.predictions, (format_board(b) for b in final.tolist()))
        print(f"wrote {args.predictions} ({'full' if system is None else system})")
    return 0


def _cmd_ceiling(args) -> int:
    import json

    from rmkernels.tasks.sudoku.ceiling import alternatives
    from rmkernels.tasks.sudoku.data import write_lines
    from rmkernels.tasks.sudoku.evaluate import DEFAULT_BOARDS, load_boards

    corrupted, solution = load_boards(args.boards, args.limit)
    alt = alternatives(corrupted, solution, workers=args.workers, log=None if args.quiet else print)
    summary = alt.summary()
    print(f"{summary['boards']} boards from {args.boards or DEFAULT_BOARDS}: {summary['unique']} with a unique "
          f"nearest grid, {summary['tie']} tied with another valid grid, {summary['closer']} with another valid "
          f"grid nearer than the solution\nbest expected exact of any decoder: {summary['ceiling_exact_pct']:.2f}%")
    if args.json:
        doc = {"boards": args.boards or DEFAULT_BOARDS, **summary, "distance": alt.distance.tolist(),
               "nearest_other": alt.nearest.tolist(), "count_other": alt.count.tolist()}
        write_lines(args.json, [json.dumps(doc)])
        print(f"wrote {args.json}")
    return 0


def _cmd_demo(args) -> int:
    import torch

    from rmkernels.tasks.sudoku.checkpoint import load_checkpoint
    from rmkernels.tasks.sudoku.demo import run_demo
    from rmkernels.tasks.sudoku.evaluate import BASELINES, TITLES, checkpoint_path, decode_boards, decode_config
    from rmkernels.tasks.sudoku.evaluate import load_boards

    corrupted, solution = load_boards(args.boards)
    if not 0 <= args.index < len(corrupted):
        raise SystemExit(f"--index must be in [0, {len(corrupted)}), got {args.index}")
    system, loaded = _resolve_system(args)
    system = system or "full"
    model, norm, meta = loaded or load_checkpoint(checkpoint_path(system, args.checkpoint_dir))
    cfg = decode_config(meta, BASELINES.get(system, "rm"), args.steps, args.remask_threshold, args.rescue_ratio)
    board = torch.as_tensor(corrupted[args.index : args.index + 1])
    _, _, traj = decode_boards(model, norm, board, cfg, kernels=args.kernels)
    wrong = int((corrupted[args.index] != solution[args.index]).sum())
    run_demo(traj[:, 0], torch.as_tensor(solution[args.index]), delay=args.delay,
             color=False if args.no_color else None,
             title=f"{TITLES.get(system, system)}: board {args.index}, {wrong} corrupted cells")
    return 0


def _open_unit(text: str) -> float:
    """argparse type: a float in (0, 1)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {v}")
    return v


def add_sudoku_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``rmk sudoku`` and its sub-commands on the ``rmk`` sub-parser collection."""
    from rmkernels.tasks.sudoku.data import DEFAULT_SEED, SPLITS
    from rmkernels.tasks.sudoku.train import build_parser

    p = subparsers.add_parser(
        "sudoku", help="Sudoku revision: train, evaluate, demo",
        description="Sudoku revision with Reflective Masking (docs/sudoku.md): a corrupted full board is "
                    "decoded into a valid grid. The shipped models and test boards are package data.")
    sub = p.add_subparsers(dest="sudoku_command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="pretrain the base MDM / post-train the RM variants / export",
                       description="Train the Sudoku models: `base` (the masked diffusion model), `variant` "
                                   "(RM post-training), `export` (re-save for shipping).")
    build_parser(t)
    t.set_defaults(func=_cmd_train)

    m = sub.add_parser("make-boards", help="write a board file (<corrupted> <solution> per line)",
                       description="Generate corrupted boards of a split (train / val / test seed grids under "
                                   "random symmetries, 4-20 cells changed) and write them, one "
                                   "'<81 digits> <81 digits>' line per board.")
    m.add_argument("--split", choices=sorted(SPLITS), default="test")
    m.add_argument("--n", type=int, default=1000)
    m.add_argument("--seed", type=int, default=DEFAULT_SEED)
    m.add_argument("--min-corrupt", type=int, default=4)
    m.add_argument("--max-corrupt", type=int, default=20)
    m.add_argument("--out", required=True)
    m.set_defaults(func=_cmd_make_boards)

    from rmkernels._utils import IMPLS
    from rmkernels.tasks.sudoku.evaluate import DEFAULT_REMASK_THRESHOLD, DEFAULT_STEPS, SYSTEMS

    def common(q):
        q.add_argument("--boards", default=None, help="board file (default: the shipped 1000-board test split)")
        q.add_argument("--variant", choices=SYSTEMS, default=None)
        q.add_argument("--checkpoint", default=None, help="a .safetensors checkpoint instead of the shipped one")
        q.add_argument("--checkpoint-dir", default=None, help="folder of sudoku_<name>.safetensors files")
        q.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="decoding step budget per board")
        q.add_argument("--kernels", default="auto", choices=IMPLS,
                       help="implementation preference of the decoder's ops (generate(kernels=...))")
        q.add_argument("--remask-threshold", type=float, default=DEFAULT_REMASK_THRESHOLD,
                       help="p(token) threshold of the base_conf_remask baseline")
        q.add_argument("--rescue-ratio", type=_open_unit, default=None,
                       help="stuck rescue of the RM decoder (an extension, docs/spec.md §6; off by default): where a board "
                            "reaches a fixed point, re-mask once the cells with p(M) > RATIO * p(token)")

    e = sub.add_parser("eval", help="decode corrupted boards and report exact/valid/replay/conflicts/steps",
                       description="Decode corrupted boards with the shipped models (or --checkpoint) and both "
                                   "training-free baselines; print the metrics table (docs/spec.md §5), the "
                                   "exact % split by board kind and the published ablation ordering, paired.")
    common(e)
    e.add_argument("--json", default=None, help="write the metrics as JSON")
    e.add_argument("--predictions", default=None,
                   help="write each final board (81 digits, 0 = masked) per line, in input order")
    e.add_argument("--limit", type=int, default=None, help="only the first N boards")
    e.add_argument("--ceiling", default=None,
                   help="a `rmk sudoku ceiling --json` file of these boards: also report exact %% against the "
                        "best any decoder can reach, split by board kind (default: the shipped one, for the "
                        "default boards)")
    e.add_argument("--batch-size", type=int, default=128)
    e.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_cmd_eval)

    c = sub.add_parser("ceiling", help="best exact %% any decoder can reach on a board file (needs ortools)",
                       description="For every board, find the nearest valid grids other than the solution "
                                   "(CP-SAT) and report the best expected exact % of any decoder "
                                   "(docs/sudoku.md, 'The ceiling').")
    c.add_argument("--boards", default=None, help="board file (default: the shipped 1000-board test split)")
    c.add_argument("--limit", type=int, default=None, help="only the first N boards")
    c.add_argument("--workers", type=int, default=1, help="CP-SAT search workers")
    c.add_argument("--json", default=None, help="write the summary and per-board distances as JSON")
    c.add_argument("--quiet", action="store_true", help="no progress lines")
    c.set_defaults(func=_cmd_ceiling)

    d = sub.add_parser("demo", help="show one board being revised step by step",
                       description="Decode one board and show the canvas after every step in the terminal "
                                   "(re-masked cells highlighted).")
    common(d)
    d.add_argument("--index", type=int, default=0, help="which board of the file")
    d.add_argument("--delay", type=float, default=0.7, help="seconds between frames")
    d.add_argument("--no-color", action="store_true")
    d.set_defaults(func=_cmd_demo)
    return p
