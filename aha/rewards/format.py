"""Format rewards for the R1-Zero template: ``<think> … </think> <answer> … </answer>``."""

from __future__ import annotations

import re

from aha.rewards.registry import register_reward

_STRICT = re.compile(r"^\s*<think>(?:(?!<think>|</think>).)*</think>"
                     r"\s*<answer>(?:(?!<answer>|</answer>).)+</answer>\s*$", re.DOTALL)
_LENIENT = re.compile(r"<think>.*?</think>.*?<answer>.+?</answer>", re.DOTALL)


def follows_format(text: str, strict: bool = True) -> bool:
    """Strict: the whole completion is one think block then one answer block, nothing else around them.
    Lenient: a think block followed somewhere by an answer block."""
    return bool((_STRICT if strict else _LENIENT).search(text))


@register_reward("format")
def format_reward(strict: bool = True):
    """1.0 when the completion follows the R1-Zero format (see :func:`follows_format`), else 0.0."""

    def reward(completions: list[str], **columns) -> list[float]:
        return [1.0 if follows_format(c, strict) else 0.0 for c in completions]

    return reward


@register_reward("tag_count")
def tag_count():
    """Partial credit: 0.25 for each of the four tags that appears exactly once."""

    def reward(completions: list[str], **columns) -> list[float]:
        tags = ("<think>", "</think>", "<answer>", "</answer>")
        return [sum(0.25 for t in tags if c.count(t) == 1) for c in completions]

    return reward
