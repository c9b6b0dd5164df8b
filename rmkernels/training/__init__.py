"""Reflective Masking post-training (docs/spec.md §4): trajectory synthesis, oracle labels, data sources
and the trainer. ``rmk train --help`` (alias ``python -m rmkernels.training``) trains a TinyMDM on precomputed shards
(also under ``torchrun``)."""
from rmkernels.training.data import RMDataset, SynthData, global_batch_indices, precompute
from rmkernels.training.synth import (
    RMBatch,
    SynthConfig,
    SynthTrajectory,
    build_trajectories,
    make_batch,
    synthesize,
    trajectories_from_corruption,
)

__all__ = [
    "RMBatch",
    "RMDataset",
    "SynthConfig",
    "SynthData",
    "SynthTrajectory",
    "TrainConfig",
    "Trainer",
    "build_trajectories",
    "global_batch_indices",
    "make_batch",
    "precompute",
    "synthesize",
    "trajectories_from_corruption",
]


def __getattr__(name):  # the trainer imports the loss kernels (Triton): load it on first use
    if name in ("TrainConfig", "Trainer"):
        from rmkernels.training import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'rmkernels.training' has no attribute {name!r}")
