"""The longest work + '#answer' over every problem of the arithmetic task (MAX_WORK_CHARS).

Exhaustive over reachable values: after each operation keep, for every reachable value, the
longest work written so far; every operand choice is enumerated. Prints the maximum for 2, 3
and 4 operands (18, 34, 50 characters). About a minute on one core.

    python experiments/text/max_lengths.py
"""
import numpy as np


def main() -> None:
    cur = {v: 0 for v in range(1000)}  # value -> longest work so far
    best = 0
    for n_ops in range(1, 4):
        vals = np.array(list(cur))
        lens = np.array([cur[v] for v in vals])
        vlen = np.char.str_len(vals.astype(str))
        new = {}
        for op in "+-*":
            for b in (range(2, 10) if op == "*" else range(1000)):
                r = vals + b if op == "+" else vals - b if op == "-" else vals * b
                rlen = np.char.str_len(r.astype(str))
                step = lens + vlen + 1 + len(str(b)) + 1 + rlen + 1  # "a<op>b=c;"
                best = max(best, int((step + 1 + rlen).max()))  # + "#c"
                u, inv = np.unique(r, return_inverse=True)
                m = np.full(len(u), -1)
                np.maximum.at(m, inv, step)
                for v, length in zip(u.tolist(), m.tolist()):
                    if new.get(v, -1) < length:
                        new[v] = length
        print(f"{n_ops + 1} operands: longest work + answer {best} characters ({len(new)} reachable values)")
        cur = new


if __name__ == "__main__":
    main()
