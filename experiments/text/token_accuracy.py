"""Where a model's errors are: one-shot accuracy of masked window positions by kind of token.

Each val problem's window is masked at ratio t (every position independently, prompt visible) and
filled by one argmax forward; positions are grouped as copies (operands and operators of the
work, which repeat the prompt or the previous result), results (digits after '=' up to ';'),
answer (after '#'), structure ('=', ';', '#', '<eos>') and padding. Then, the arithmetic alone:
with the work visible up to the first '=' and everything after it masked, the share of step-1
results whose digits are all right in one argmax forward, and of their single digits.

    python experiments/text/token_accuracy.py CHECKPOINT_DIR_OR_STATE_PT [--n 500] [--ratios 0.1,0.5,0.9]
"""
import argparse
import os

import numpy as np
import torch


def kinds(expression: str) -> list:
    from rmkernels.tasks.text.data import GEN_LENGTH
    from rmkernels.tasks.text.problems import work

    w = work(expression)
    out, mode = [], "copy"
    for ch in w:
        if ch == "=":
            out.append("structure")
            mode = "result"
        elif ch == ";":
            out.append("structure")
            mode = "copy"
        elif ch == "#":
            out.append("structure")
            mode = "answer"
        else:
            out.append(mode)
    out.append("structure")  # <eos>
    return out + ["padding"] * (GEN_LENGTH - len(out))


def main() -> None:
    from rmkernels.tasks.text.checkpoint import load_checkpoint, new_model
    from rmkernels.tasks.text.data import PROMPT_WIDTH, full_rows
    from rmkernels.tasks.text.problems import generate_problems
    from rmkernels.tasks.text.tokenizer import MASK_ID

    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--ratios", default="0.1,0.5,0.9")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if os.path.isdir(args.checkpoint):
        model = load_checkpoint(args.checkpoint)[0]
    else:
        st = torch.load(args.checkpoint, weights_only=True)
        model = new_model()
        model.load_state_dict(st["model"])
        model.eval()
    ex = generate_problems("val", args.n, 7)
    ids, gen = full_rows(ex)
    kind = np.array([kinds(e) for e in ex])  # [N, G]
    rng = np.random.default_rng(0)
    for r in (float(x) for x in args.ratios.split(",")):
        masked = gen & torch.from_numpy(rng.random(ids.shape) < r)
        with torch.no_grad():
            pred = model(input_ids=torch.where(masked, MASK_ID, ids)).logits.argmax(-1)
        ok = (pred == ids)[:, PROMPT_WIDTH:].numpy()
        m = masked[:, PROMPT_WIDTH:].numpy()
        parts = [f"{k} {100 * ok[m & (kind == k)].mean():.1f}%" for k in ("copy", "result", "answer", "structure", "padding")]
        print(f"mask ratio {r}: " + ", ".join(parts))
    # step-1 result from scratch: everything after the first '=' of the work masked
    from rmkernels.tasks.text.problems import work

    eq = torch.tensor([PROMPT_WIDTH + work(e).index("=") + 1 for e in ex])  # first result position
    res_len = torch.tensor([work(e).index(";") - work(e).index("=") - 1 for e in ex])
    pos = torch.arange(ids.shape[1])[None, :]
    masked = pos >= eq[:, None]
    with torch.no_grad():
        pred = model(input_ids=torch.where(masked, MASK_ID, ids)).logits.argmax(-1)
    in_res = (pos >= eq[:, None]) & (pos < (eq + res_len)[:, None])
    ok = pred == ids
    whole = (ok | ~in_res).all(1).float().mean()
    print(f"step-1 result from scratch: {100 * float(whole):.1f}% whole results, "
          f"{100 * float(ok[in_res].float().mean()):.1f}% of digits")


if __name__ == "__main__":
    main()
