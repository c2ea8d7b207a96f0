"""Verifiable rewards, registered by name (see :mod:`aha.rewards.registry`).

Every reward has the TRL signature ``f(completions: list[str], **columns) -> list[float | None]``;
``get_reward(name, **options)`` builds one: accuracy, format, tag_count, language, overlong, length,
cosine, repetition, code.
"""

from aha.rewards import code as _code  # noqa: F401  (registers code)
from aha.rewards import format as _format  # noqa: F401  (registers format, tag_count)
from aha.rewards import language as _language  # noqa: F401  (registers language)
from aha.rewards import length as _length  # noqa: F401  (registers overlong, length, cosine, repetition)
from aha.rewards import math as _math  # noqa: F401  (registers accuracy)
from aha.rewards.code import extract_code
from aha.rewards.format import follows_format
from aha.answers import extract_answer, normalise_gold
from aha.rewards.math import answers_equal
from aha.rewards.registry import (REWARDS, RewardResult, RewardTerm, build_rewards, get_reward, register_reward,
                                  report_failure, score)

__all__ = [
    "REWARDS", "RewardResult", "RewardTerm", "answers_equal", "build_rewards", "extract_answer", "extract_code",
    "follows_format", "get_reward", "normalise_gold", "register_reward", "report_failure", "score",
]
