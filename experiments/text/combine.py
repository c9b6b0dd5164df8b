"""The published ordering from several ``rmk text eval --json`` files of the same problems.

Each file holds the graded answers of the systems it evaluated (``answers``: ``"<system>@K<k>"``
-> one answer per problem); this pairs them across files (systems evaluated in separate runs, e.g.
each variant as soon as it was trained) and prints the accuracy table and the paired verdicts as
``rmk text eval`` does for systems evaluated together.

    python experiments/text/combine.py EVAL.json [EVAL.json ...] [--json OUT] [--md OUT]
"""
import argparse
import json


def main() -> None:
    from rmkernels._utils import atomic_write
    from rmkernels.tasks.text.evaluate import TITLES
    from rmkernels.tasks.text.metrics import correct_mask, markdown_table, ordering, ordering_table
    from rmkernels.tasks.text.problems import read_problems

    ap = argparse.ArgumentParser()
    ap.add_argument("evals", nargs="+")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args()
    docs = [json.load(open(p)) for p in args.evals]
    sources = {(d["problems"], d["n"]) for d in docs}
    if len(sources) != 1:
        raise ValueError(f"the files evaluate different problems: {sorted(sources)}")
    (source, n), = sources
    values = read_problems(source)[1][:n]
    rows, correct = [], {}
    for d in docs:
        for m in d["results"]:
            key = (m["system"], m["k"])
            if key in correct:
                raise ValueError(f"{m['system']} at K={m['k']} is in more than one file")
            correct[key] = correct_mask(d["answers"][f"{m['system']}@K{m['k']}"], values)
            rows.append((m["system"], m["k"], m))
    rows.sort(key=lambda r: (r[1], list(TITLES).index(r[0]) if r[0] in TITLES else 99))
    table = markdown_table(rows, TITLES)
    rel = ordering(correct)
    text = f"{n} problems from {source}\n\n{table}\n"
    if rel:
        text += "\nthe published ordering, paired over these problems (right minus left)\n\n" + ordering_table(rel, TITLES) + "\n"
    print(text)
    if args.md:
        atomic_write(args.md, text)
    if args.json:
        atomic_write(args.json, json.dumps({"problems": source, "n": n, "files": args.evals,
                                            "results": [dict(m, system=s) for s, _, m in rows],
                                            "ordering": rel, "table": text}, indent=2) + "\n")


if __name__ == "__main__":
    main()
