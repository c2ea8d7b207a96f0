"""Trainers on one run core (:mod:`aha.trainer.core`): GRPO and its variants."""

from aha.trainer.core import EvalResult, Policy, StepResult, Trainer, build_policy
from aha.trainer.grpo import GRPOTrainer

__all__ = ["EvalResult", "GRPOTrainer", "Policy", "StepResult", "Trainer", "build_policy"]
