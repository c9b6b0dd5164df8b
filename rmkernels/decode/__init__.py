"""The Reflective Masking decoder (SPEC §2, §3)."""
from rmkernels.decode.trajectory import ReplayStats, replay_statistics, trajectory_events

__all__ = ["ReplayStats", "replay_statistics", "trajectory_events"]
