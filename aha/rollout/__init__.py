"""Rollout (generation) backends."""

from aha.rollout.base import Generation, GenerationBackend, SamplingParams
from aha.rollout.hf import HFBackend

__all__ = ["Generation", "GenerationBackend", "HFBackend", "SamplingParams"]
