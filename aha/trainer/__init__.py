"""Training loops."""

from aha.trainer.grpo import GRPOTrainer

__all__ = ["GRPOTrainer"]
