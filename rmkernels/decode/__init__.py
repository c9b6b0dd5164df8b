"""The Reflective Masking decoder (docs/spec.md §2, §3)."""
from rmkernels.decode.config import DecodeConfig
from rmkernels.decode.generate import DecodeOutput, generate
from rmkernels.decode.model import RMModel, as_rm_model
from rmkernels.decode.sampler import RMSampler, SamplerState
from rmkernels.decode.trajectory import ReplayStats, replay_statistics, trajectory_events

__all__ = [
    "DecodeConfig",
    "DecodeOutput",
    "RMModel",
    "RMSampler",
    "SamplerState",
    "ReplayStats",
    "as_rm_model",
    "generate",
    "replay_statistics",
    "trajectory_events",
]
