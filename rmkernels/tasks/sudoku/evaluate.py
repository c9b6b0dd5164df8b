"""Evaluate Sudoku revision: decode corrupted full boards with ``reveal="all"`` (docs/spec.md §5).

Systems (the table's rows, in order):

| name | checkpoint | sampler |
|---|---|---|
| ``base_no_remask`` | base MDM | ``low_confidence``: never re-masks, so a full board stays as it is |
| ``base_conf_remask`` | base MDM | ``confidence_remask``: re-mask tokens with ``p(token) < threshold`` (0.4) |
| ``rm`` / ``rm_hist`` / ``rm_hist_decay`` / ``full`` | RM variants | ``rm`` with the variant's History Reference |

Checkpoints ship as package data (:mod:`rmkernels.tasks.sudoku.assets`).
"""
from __future__ import annotations

import os
import time

import torch

from rmkernels.tasks.sudoku.assets import checkpoint_dir, default_boards, default_ceiling
from rmkernels.tasks.sudoku.checkpoint import load_checkpoint
from rmkernels.tasks.sudoku.data import read_boards
from rmkernels.tasks.sudoku.grids import MASK_ID
from rmkernels.tasks.sudoku.metrics import board_metrics

VARIANT_NAMES = ("rm", "rm_hist", "rm_hist_decay", "full")
BASELINES = {"base_no_remask": "low_confidence", "base_conf_remask": "confidence_remask"}
SYSTEMS = tuple(BASELINES) + VARIANT_NAMES
TITLES = {
    "base_no_remask": "base MDM, no re-mask",
    "base_conf_remask": "base MDM + confidence re-mask",
    "rm": "RM",
    "rm_hist": "RM + history (no rotation)",
    "rm_hist_decay": "RM + history + decay",
    "full": "RM + history + decay + rotation (full)",
}
DEFAULT_STEPS = 20
DEFAULT_REMASK_THRESHOLD = 0.4  # the confidence heuristic's threshold (Diffulex / dInfer)
CHECKPOINT_DIR = checkpoint_dir()
DEFAULT_BOARDS = default_boards()
# `rmk sudoku ceiling --json` of DEFAULT_BOARDS: eval reports exact % against it on the default boards
DEFAULT_CEILING = default_ceiling()


def checkpoint_path(system: str, checkpoint_dir: str | None = None) -> str:
    """The checkpoint file of a system name (baselines use the base MDM).

    Parameters
    ----------
    system : str
        One of :data:`SYSTEMS`, or ``"base"``.
    checkpoint_dir : str, optional
        Folder of ``sudoku_<name>.safetensors`` files (default: the shipped ones).

    Returns
    -------
    str

    Example
    -------
    >>> os.path.basename(checkpoint_path("base_conf_remask"))
    'sudoku_base.safetensors'
    """
    if system not in SYSTEMS and system != "base":
        raise ValueError(f"variant must be one of {list(SYSTEMS)}, got {system!r}")
    name = "base" if system in BASELINES else system
    return os.path.join(checkpoint_dir or CHECKPOINT_DIR, f"sudoku_{name}.safetensors")


def decode_config(meta: dict, sampler: str = "rm", steps: int = DEFAULT_STEPS,
                  remask_threshold: float = DEFAULT_REMASK_THRESHOLD, rescue_ratio: float | None = None):
    """The decoding settings of a checkpoint: reveal every cell in parallel, its History Reference.

    ``rescue_ratio`` turns on the decoder's stuck rescue (:class:`rmkernels.DecodeConfig`) for the
    RM sampler; the baselines ignore it.

    Parameters
    ----------
    meta : dict
        The checkpoint's metadata (its ``decode`` entry holds the variant's History Reference).
    sampler : {"rm", "low_confidence", "confidence_remask"}
    steps : int
        Step budget per board.
    remask_threshold : float
        Threshold of ``confidence_remask``.
    rescue_ratio : float, optional

    Returns
    -------
    DecodeConfig

    Example
    -------
    >>> decode_config({"decode": {"history_steps": 6}}).history_steps
    6
    """
    from rmkernels.decode import DecodeConfig

    hist = meta.get("decode", {}) if sampler == "rm" else {}
    return DecodeConfig(
        steps=steps, block_size=None, reveal="all", remask=True, max_remask=-1, sampler=sampler,
        remask_threshold=remask_threshold, rescue_ratio=rescue_ratio if sampler == "rm" else None,
        history_steps=int(hist.get("history_steps", 0)),
        history_decay=float(hist.get("history_decay", 0.0)), history_rotate=bool(hist.get("history_rotate", False)),
        record_trajectory=True, check_every=1,
    )


@torch.no_grad()
def decode_boards(model, history_norm, boards: torch.Tensor, config, batch_size: int = 128, kernels: str = "auto",
                  on_batch=None):
    """Decode boards ``[N, 81]`` in chunks; returns ``(final [N, 81], steps [N], trajectory [T + 1, N, 81])``.

    ``kernels`` is the implementation preference of the decoder's ops (``generate(kernels=...)``);
    ``on_batch(n)`` is called after each chunk of ``n`` boards (progress bars).

    Parameters
    ----------
    model, history_norm
        A loaded checkpoint (:func:`rmkernels.tasks.sudoku.checkpoint.load_checkpoint`).
    boards : Tensor ``[N, 81]``
        Corrupted boards (token ids).
    config : DecodeConfig
        Usually :func:`decode_config` of the checkpoint.
    batch_size : int
    kernels : {"auto", "triton", "ext", "reference"}
    on_batch : callable, optional

    Returns
    -------
    (Tensor, Tensor, Tensor)
        ``final [N, 81]``, ``steps [N]``, ``trajectory [T + 1, N, 81]``.

    Example
    -------
    >>> model, norm, meta = load_checkpoint(checkpoint_path("full"))
    >>> boards = torch.as_tensor(load_boards(limit=2)[0])
    >>> final, steps, traj = decode_boards(model, norm, boards, decode_config(meta))
    >>> final.shape
    torch.Size([2, 81])
    """
    from rmkernels.decode import generate

    finals, steps, trajs = [], [], []
    for i in range(0, boards.shape[0], batch_size):
        out = generate(model, boards[i : i + batch_size], config, mask_id=MASK_ID,
                       history_norm=history_norm if config.history_steps else None, kernels=kernels)
        finals.append(out.sequences)
        steps.append(out.steps)
        trajs.append(out.trajectory)
        if on_batch is not None:
            on_batch(out.sequences.shape[0])
    T = max(t.shape[0] for t in trajs)  # finished rows repeat their final canvas: pad the same way
    trajs = [torch.cat([t, t[-1:].expand(T - t.shape[0], -1, -1)]) for t in trajs]
    return torch.cat(finals), torch.cat(steps), torch.cat(trajs, dim=1)


def evaluate_system(system: str, corrupted, solution, *, checkpoint: str | None = None,
                    checkpoint_dir: str | None = None, steps: int = DEFAULT_STEPS, batch_size: int = 128,
                    kernels: str = "auto", remask_threshold: float = DEFAULT_REMASK_THRESHOLD,
                    rescue_ratio: float | None = None, loaded=None, on_batch=None):
    """Decode and score one system; returns ``(metrics, final boards [N, 81])``.

    ``checkpoint`` overrides the shipped file; ``loaded`` is an already loaded
    ``(model, history_norm, meta)``; ``on_batch`` as in :func:`decode_boards`.

    Parameters
    ----------
    system : str
        One of :data:`SYSTEMS`.
    corrupted, solution : array-like ``[N, 81]``
    checkpoint, checkpoint_dir, steps, batch_size, kernels, remask_threshold, rescue_ratio, loaded, on_batch
        See above and :func:`decode_config`.

    Returns
    -------
    (dict, Tensor)
        The metrics (:func:`rmkernels.tasks.sudoku.metrics.board_metrics` plus timing) and the
        final boards.

    Example
    -------
    >>> c, s = load_boards(limit=5)
    >>> metrics, final = evaluate_system("full", c, s)
    >>> 0 <= metrics["exact_pct"] <= 100
    True
    """
    sampler = BASELINES.get(system, "rm")
    model, norm, meta = loaded or load_checkpoint(checkpoint or checkpoint_path(system, checkpoint_dir))
    cfg = decode_config(meta, sampler, steps, remask_threshold, rescue_ratio)
    boards = torch.as_tensor(corrupted).long()
    t0 = time.perf_counter()
    final, n_steps, traj = decode_boards(model, norm, boards, cfg, batch_size, kernels, on_batch)
    metrics = board_metrics(final, solution, n_steps, traj, inputs=boards)
    metrics.update(seconds=round(time.perf_counter() - t0, 2), sampler=sampler, checkpoint=meta.get("variant", "base"))
    if sampler == "confidence_remask":
        metrics["remask_threshold"] = remask_threshold
    if cfg.rescue_ratio is not None:
        metrics["rescue_ratio"] = cfg.rescue_ratio
    return metrics, final


def evaluate_suite(corrupted, solution, systems=SYSTEMS, checkpoint_dir: str | None = None, log=None, **kw):
    """Evaluate several systems on the same boards (the base model is loaded once).

    Parameters
    ----------
    corrupted, solution : array-like ``[N, 81]``
    systems : sequence of str
        Names from :data:`SYSTEMS` (default: all six).
    checkpoint_dir : str, optional
    log : callable, optional
        Called with one line per system.
    **kw
        Passed to :func:`evaluate_system`.

    Returns
    -------
    (dict, dict)
        ``{system: metrics}`` and ``{system: final boards [N, 81]}``.

    Example
    -------
    >>> c, s = load_boards(limit=4)
    >>> results, finals = evaluate_suite(c, s, ("base_no_remask", "rm"))
    >>> sorted(results)
    ['base_no_remask', 'rm']
    """
    results, finals, cache = {}, {}, {}
    for name in systems:
        path = checkpoint_path(name, checkpoint_dir)
        if path not in cache:
            cache[path] = load_checkpoint(path)
        results[name], finals[name] = evaluate_system(name, corrupted, solution, loaded=cache[path], **kw)
        if log is not None:
            log(f"{name}: exact {results[name]['exact_pct']:.1f}% in {results[name]['seconds']:.1f}s")
    return results, finals


def load_boards(path: str | None = None, limit: int | None = None):
    """Boards from ``path`` (default: the shipped 1000-board test split), the first ``limit``.

    Parameters
    ----------
    path : str, optional
    limit : int, optional

    Returns
    -------
    (ndarray, ndarray)
        ``corrupted``, ``solution``, each ``[N, 81]`` int64.

    Example
    -------
    >>> load_boards(limit=5)[0].shape
    (5, 81)
    """
    corrupted, solution = read_boards(path or DEFAULT_BOARDS)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        corrupted, solution = corrupted[:limit], solution[:limit]
    return corrupted, solution


__all__ = [
    "BASELINES", "DEFAULT_BOARDS", "DEFAULT_CEILING", "SYSTEMS", "TITLES", "VARIANT_NAMES", "checkpoint_path", "decode_boards",
    "decode_config", "evaluate_suite", "evaluate_system", "load_boards",
]
