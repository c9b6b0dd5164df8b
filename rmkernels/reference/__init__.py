"""Eager PyTorch references: the executable specification of every op (docs/spec.md).

Each kernel in :mod:`rmkernels.ops` is tested against the function of the same name here, and
``impl="reference"`` runs these directly (they are also the CPU fallback).
"""
from rmkernels.reference.rng import gumbel_noise, row_counters, seed_key, uniform_noise
from rmkernels.reference.linear_stats import linear_logits_reference, rm_linear_stats_reference
from rmkernels.reference.rm_stats import STATUS_ALL_NEG_INF, STATUS_NAN, STATUS_TOKEN_RANGE, rm_stats_reference

__all__ = [
    "STATUS_ALL_NEG_INF",
    "STATUS_NAN",
    "STATUS_TOKEN_RANGE",
    "gumbel_noise",
    "linear_logits_reference",
    "rm_linear_stats_reference",
    "rm_stats_reference",
    "row_counters",
    "seed_key",
    "uniform_noise",
]
