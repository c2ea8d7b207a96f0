"""Pure tensor functions of the RL objective: advantage estimators, log-probs, policy losses. No model, no
loop, no I/O; variants are registered by name."""

from aha.algorithms.advantages import ADVANTAGE_ESTIMATORS, AdvantageInputs, compute_advantages, compute_gae
from aha.algorithms.logprobs import token_entropy, token_logprobs, token_logprobs_and_entropy
from aha.algorithms.losses import LOSS_TYPES, kl_k3, policy_loss, value_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AdvantageInputs",
    "LOSS_TYPES",
    "compute_advantages",
    "compute_gae",
    "kl_k3",
    "policy_loss",
    "token_entropy",
    "token_logprobs",
    "token_logprobs_and_entropy",
    "value_loss",
]
