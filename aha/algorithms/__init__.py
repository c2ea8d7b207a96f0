"""Pure tensor functions of the RL objective: advantages, log-probs, policy losses (no I/O)."""

from aha.algorithms.advantages import ADVANTAGE_SCALES, compute_advantages
from aha.algorithms.logprobs import masked_mean, token_entropy, token_logprobs
from aha.algorithms.losses import LOSS_TYPES, kl_k3, micro_batch_weight, policy_loss

__all__ = [
    "ADVANTAGE_SCALES",
    "LOSS_TYPES",
    "compute_advantages",
    "kl_k3",
    "masked_mean",
    "micro_batch_weight",
    "policy_loss",
    "token_entropy",
    "token_logprobs",
]
