"""Verifiable rewards, registered by name (see :mod:`aha.rewards.registry`).

Every reward has the TRL signature ``f(completions: list[str], **columns) -> list[float | None]``;
``get_reward(name, **options)`` builds one: accuracy, format, tag_count, language, overlong, length,
cosine, repetition, code; and two model-based rewards for general prompts: reward_model (a
sequence-classification reward model) and judge (an LLM behind an OpenAI-compatible endpoint).
"""

from aha.answers import extract_answer, normalise_gold

# importing a reward module registers its rewards: code; format, tag_count; language; overlong, length,
# cosine, repetition; accuracy; judge; reward_model
from aha.rewards import code, format, judge, language, length, math, model  # noqa: F401
from aha.rewards.code import extract_code
from aha.rewards.format import follows_format
from aha.rewards.math import answers_equal
from aha.rewards.registry import (REWARDS, RewardResult, RewardTerm, build_rewards, get_reward, register_reward,
                                  report_failure, score)

__all__ = [
    "REWARDS", "RewardResult", "RewardTerm", "answers_equal", "build_rewards", "extract_answer", "extract_code",
    "follows_format", "get_reward", "normalise_gold", "register_reward", "report_failure", "score",
]
