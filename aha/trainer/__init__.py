"""Trainers on one run core (:mod:`aha.trainer.core`): GRPO and its variants, PPO with a value model, SFT."""

from aha.trainer.core import EvalResult, Policy, StepResult, Trainer, build_policy
from aha.trainer.grpo import GRPOTrainer


def rl_trainer(config, **kwargs) -> GRPOTrainer:
    """The trainer of an RL config: GRPOTrainer, or PPOTrainer with ``algorithm: ppo``."""
    if config.algorithm == "ppo":
        from aha.trainer.ppo import PPOTrainer

        return PPOTrainer.from_config(config, **kwargs)
    return GRPOTrainer.from_config(config, **kwargs)


__all__ = ["EvalResult", "GRPOTrainer", "Policy", "StepResult", "Trainer", "build_policy", "rl_trainer"]
