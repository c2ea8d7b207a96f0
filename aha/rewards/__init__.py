"""Verifiable rewards, registered by name (see :mod:`aha.rewards.registry`)."""

from aha.rewards import format as _format  # noqa: F401  (registers format, tag_count)
from aha.rewards import math as _math  # noqa: F401  (registers accuracy)
from aha.rewards.math import answers_equal, extract_answer, normalise_gold
from aha.rewards.format import follows_format
from aha.rewards.registry import REWARDS, RewardResult, RewardTerm, build_rewards, get_reward, register_reward, score

__all__ = [
    "REWARDS", "RewardResult", "RewardTerm", "answers_equal", "build_rewards", "extract_answer",
    "follows_format", "get_reward", "normalise_gold", "register_reward", "score",
]
