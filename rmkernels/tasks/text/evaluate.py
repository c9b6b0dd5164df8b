"""Evaluate the arithmetic models: decode prompts with :func:`rmkernels.generate` and score them.

Each problem is laid out as ``<expression>=`` (fixed) + ``GEN_LENGTH`` masks (generated, work,
``<eos>`` and padding included) and decoded with ``reveal="topk"``, ``reveal_per_step=K``: at most
``K`` tokens revealed per model call. Systems (``--variant`` x ``--sampler``):

| name | checkpoint | sampler |
|---|---|---|
| ``base_lc`` | base MDM | ``low_confidence`` (LLaDA: top-K reveal, never re-mask) |
| ``base_conf`` | base MDM | ``confidence_remask`` (re-mask tokens with ``p(token) < 0.4``) |
| ``rm`` / ``rm_hist`` / ``rm_hist_decay`` / ``full`` | RM variants | ``rm``, the variant's History Reference |

Step budget (``--steps``; model calls per problem at most): by default ``ceil(GEN_LENGTH / K)``
for ``low_confidence``, which reveals exactly ``K`` tokens a call and needs no more, and twice
that for the re-masking samplers, so re-masked tokens can be revealed again. The calls a problem
actually used are reported (``mean_calls``).
"""
from __future__ import annotations

import math
import time

import torch

from rmkernels.tasks.text.checkpoint import load_checkpoint, shipped
from rmkernels.tasks.text.data import GEN_LENGTH, PROMPT_WIDTH, prompt_ids, target_ids
from rmkernels.tasks.text.problems import consistent_work, parse_answer, read_problems
from rmkernels.tasks.text.tokenizer import ASSETS, CHARS, EOS_ID, MASK_ID, PAD_ID

SYSTEMS = {  # name -> (checkpoint, sampler)
    "base_lc": ("base", "low_confidence"),
    "base_conf": ("base", "confidence_remask"),
    "rm": ("rm", "rm"),
    "rm_hist": ("rm_hist", "rm"),
    "rm_hist_decay": ("rm_hist_decay", "rm"),
    "full": ("full", "rm"),
}
CHECKPOINTS = ("base", "rm", "rm_hist", "rm_hist_decay", "full")
SAMPLERS = ("low_confidence", "confidence_remask", "rm")
TITLES = {
    "base_lc": "base, low-confidence",
    "base_conf": "base, confidence re-mask",
    "rm": "RM",
    "rm_hist": "RM + HER (no rotation)",
    "rm_hist_decay": "RM + HER + decay",
    "full": "RM + HER + decay + rotation (full)",
}
DEFAULT_K = (1, 2, 4, 8)
DEFAULT_REMASK_THRESHOLD = 0.4
DEFAULT_PROBLEMS = str(ASSETS / "test_problems.txt")


def system_name(variant: str, sampler: str) -> str:
    """The table name of a checkpoint decoded with a sampler (``base_lc``, ``full``, ``rm+low_confidence``, ...)."""
    for name, vs in SYSTEMS.items():
        if vs == (variant, sampler):
            return name
    return f"{variant}+{sampler}"


def default_steps(sampler: str, k: int) -> int:
    """The default step budget of a sampler at ``K`` tokens per call (module docstring)."""
    need = math.ceil(GEN_LENGTH / k)
    return need if sampler == "low_confidence" else 2 * need


def decode_config(meta: dict, sampler: str, k: int, steps: int | None = None,
                  remask_threshold: float = DEFAULT_REMASK_THRESHOLD):
    """The decoding settings: top-``K`` reveal over the whole window, the checkpoint's History
    Reference when the sampler is ``rm``."""
    from rmkernels.decode import DecodeConfig

    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"tokens per step must be an int >= 1, got {k!r}")
    hist = meta.get("decode", {}) if sampler == "rm" else {}
    return DecodeConfig(
        steps=steps or default_steps(sampler, k), block_size=None, reveal="topk", reveal_per_step=k,
        remask=True, max_remask=-1, sampler=sampler, remask_threshold=remask_threshold,
        history_steps=int(hist.get("history_steps", 0)), history_decay=float(hist.get("history_decay", 0.0)),
        history_rotate=bool(hist.get("history_rotate", False)), record_trajectory=True, check_every=8,
    )


@torch.no_grad()
def decode_problems(model, history_norm, expressions, config, batch_size: int = 500, kernels: str = "auto") -> dict:
    """Decode ``expressions``; returns per-problem arrays (input order): ``windows [N, G]`` (final
    generated ids) and ``calls``, ``reveals``, ``remasks``, ``replays`` ``[N]`` (results do not
    depend on batch composition)."""
    from rmkernels.decode import generate
    from rmkernels.decode.trajectory import replay_statistics

    prompts = torch.from_numpy(prompt_ids(expressions))  # [N, PROMPT_WIDTH], all attended
    N = len(expressions)
    windows = torch.empty(N, GEN_LENGTH, dtype=torch.long)
    counts = torch.zeros(4, N, dtype=torch.long)  # calls, reveals, remasks, replays
    for i in range(0, N, batch_size):
        ids = prompts[i : i + batch_size]
        tidx = torch.arange(i, i + ids.shape[0])
        out = generate(model, ids, config, mask_id=MASK_ID, gen_length=GEN_LENGTH, pad_id=PAD_ID,
                       history_norm=history_norm if config.history_steps else None, kernels=kernels)
        windows[tidx] = out.sequences[:, PROMPT_WIDTH:]
        st = replay_statistics(out.trajectory[:, :, PROMPT_WIDTH:], MASK_ID)
        counts[:, tidx] = torch.stack([out.steps, st.reveals, st.remasks, st.replays])
    return {"windows": windows, "calls": counts[0], "reveals": counts[1], "remasks": counts[2], "replays": counts[3]}


def window_text(ids) -> str:
    """Text of a generation window up to ``<eos>`` (``_`` = mask; padding dropped)."""
    out = []
    for i in ids:
        i = int(i)
        if i == EOS_ID:
            break
        out.append("_" if i == MASK_ID else "" if i == PAD_ID else CHARS[i] if i < len(CHARS) else "?")
    return "".join(out)


def answers_of(windows) -> list[str]:
    """The graded answer of each window (``""`` when none parses)."""
    return [parse_answer(window_text(w)) for w in windows.tolist()]


def evaluate_system(variant: str, sampler: str, k: int, expressions, values, *, steps: int | None = None,
                    loaded=None, checkpoint: str | None = None, batch_size: int = 500, kernels: str = "auto",
                    remask_threshold: float = DEFAULT_REMASK_THRESHOLD):
    """Decode and score one system; returns ``(metrics, answers, correct [N] bool, windows [N, G])``.

    ``loaded`` is an already loaded ``(model, history_norm, meta)``; else ``checkpoint`` (a
    directory) or the shipped checkpoint of ``variant``.
    """
    from rmkernels.tasks.text.metrics import correct_mask, problem_metrics

    model, norm, meta = loaded or load_checkpoint(checkpoint or shipped(variant))
    cfg = decode_config(meta, sampler, k, steps, remask_threshold)
    t0 = time.perf_counter()
    res = decode_problems(model, norm, expressions, cfg, batch_size, kernels)
    seconds = time.perf_counter() - t0
    texts = [window_text(w) for w in res["windows"].tolist()]
    answers = [parse_answer(t) for t in texts]
    consistent = [consistent_work(e, t) for e, t in zip(expressions, texts)]
    gold = torch.from_numpy(target_ids(expressions))
    m = problem_metrics(answers, values, res["windows"], gold, res["calls"], res["reveals"], res["remasks"],
                        res["replays"], consistent)
    m.update(seconds=round(seconds, 2), variant=variant, sampler=sampler, k=k, steps_budget=cfg.steps,
             history=meta.get("decode", {}) if sampler == "rm" else {})
    if sampler == "confidence_remask":
        m["remask_threshold"] = remask_threshold
    return m, answers, correct_mask(answers, values), res["windows"]


def load_problems(path: str | None = None, limit: int | None = None):
    """``(expressions, values)`` of a problem file (default: the shipped 1000 test problems), the first ``limit``."""
    exprs, values = read_problems(path or DEFAULT_PROBLEMS)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        exprs, values = exprs[:limit], values[:limit]
    return exprs, values


def gold_rows(expressions):
    """Gold generation windows ``[N, G]`` as a tensor."""
    return torch.from_numpy(target_ids(expressions))


__all__ = ["CHECKPOINTS", "DEFAULT_K", "DEFAULT_PROBLEMS", "SAMPLERS", "SYSTEMS", "TITLES", "answers_of",
           "decode_config", "decode_problems", "default_steps", "evaluate_system", "gold_rows", "load_problems",
           "system_name", "window_text"]
