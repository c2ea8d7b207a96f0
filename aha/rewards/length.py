"""Length-shaping rewards: DAPO's soft over-length penalty (``overlong``), Kimi k1.5's correctness-aware
length penalty (``length``), cosine length scaling (``cosine``, Yeo et al. 2025) and an n-gram repetition
penalty (``repetition``).

Lengths are in tokens from the ``completion_ids`` column (the trainer and TRL pass it), or, with
``unit="chars"`` / ``"words"``, counted on the text.
"""

from __future__ import annotations

import math
from collections import defaultdict

from aha.rewards.math import accuracy
from aha.rewards.registry import register_reward

UNITS = ("tokens", "chars", "words")


def lengths(completions: list[str], columns: dict, unit: str) -> list[int]:
    """Length of each completion in ``unit``."""
    if unit == "tokens":
        if "completion_ids" not in columns:
            raise KeyError("length in tokens needs the column 'completion_ids' (or use unit: chars / words)")
        return [len(ids) for ids in columns["completion_ids"]]
    if unit == "chars":
        return [len(c) for c in completions]
    return [len(c.split()) for c in completions]


def _check_unit(name: str, unit: str) -> None:
    if unit not in UNITS:
        raise ValueError(f"{name}: unit must be one of {UNITS}, got {unit!r}")


def overlong_penalty(length: int, max_length: int, cache: int) -> float:
    """DAPO's soft over-length punishment: 0 up to ``max_length - cache``, then linear down to -1 at
    ``max_length``, and -1 beyond. With max_length=100, cache=20: 80 -> 0.0, 90 -> -0.5, 100 -> -1.0."""
    if length <= max_length - cache:
        return 0.0
    if length <= max_length:
        return (max_length - cache - length) / cache
    return -1.0


@register_reward("overlong")
def overlong(max_length: int = 1024, cache: int = 256, unit: str = "tokens"):
    """DAPO's soft over-length penalty (see :func:`overlong_penalty`), in [-1, 0]."""
    _check_unit("overlong", unit)
    if not (isinstance(max_length, int) and isinstance(cache, int) and 0 < cache <= max_length):
        raise ValueError(f"overlong: need integers 0 < cache <= max_length, got {cache!r}, {max_length!r}")

    def reward(completions: list[str], **columns) -> list[float]:
        return [overlong_penalty(n, max_length, cache) for n in lengths(completions, columns, unit)]

    return reward


def kimi_length_scores(sizes: list[int], correct: list[float | None], groups: list[object]) -> list[float | None]:
    """Kimi k1.5: within each group of answers to one prompt, ``lam = 0.5 - (len - min) / (max - min)``;
    a correct answer gets ``lam``, a wrong one ``min(0, lam)``; all 0 when the group's lengths are equal.
    Example, one group of lengths [10, 20, 30], correct [1, 0, 1]: lam = [0.5, 0.0, -0.5] ->
    [0.5, 0.0, -0.5]; with correct [0, 1, 0]: [0.0, 0.0, -0.5]."""
    members: dict[object, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        members[group].append(i)
    scores: list[float | None] = [None] * len(sizes)
    for indices in members.values():
        low, high = min(sizes[i] for i in indices), max(sizes[i] for i in indices)
        for i in indices:
            if correct[i] is None:
                continue
            lam = 0.0 if high == low else 0.5 - (sizes[i] - low) / (high - low)
            scores[i] = lam if correct[i] > 0 else min(0.0, lam)
    return scores


@register_reward("length")
def length(answer_field: str = "answer", group_field: str = "question", unit: str = "tokens",
           fallback_last_number: bool = True):
    """Kimi k1.5's length penalty (see :func:`kimi_length_scores`); correctness is the ``accuracy``
    reward's, groups are the samples sharing ``group_field`` (the prompt). None where correctness is."""
    _check_unit("length", unit)
    is_correct = accuracy(answer_field=answer_field, fallback_last_number=fallback_last_number)

    def reward(completions: list[str], **columns) -> list[float | None]:
        if group_field not in columns:
            raise KeyError(f"length reward needs the column {group_field!r} to group answers by prompt")
        correct = is_correct(completions, **columns)
        return kimi_length_scores(lengths(completions, columns, unit), correct, columns[group_field])

    return reward


def cosine_scaled(length: int, correct: bool, max_length: int, correct_range: tuple[float, float],
                  wrong_range: tuple[float, float]) -> float:
    """Cosine length scaling: a correct answer earns from ``correct_range[1]`` (length 0) down to
    ``correct_range[0]`` (``max_length`` and beyond); a wrong one from ``wrong_range[0]`` (length 0) up to
    ``wrong_range[1]``: short right answers and long wrong ones are preferred. With the defaults
    (0.5, 1.0) and (-1.0, -0.5): correct at half length -> 0.75, wrong at half length -> -0.75."""
    progress = min(length / max_length, 1.0)
    cosine = math.cos(progress * math.pi)
    if correct:
        start, end = correct_range[1], correct_range[0]
    else:
        start, end = wrong_range[0], wrong_range[1]
    return end + 0.5 * (start - end) * (1.0 + cosine)


@register_reward("cosine")
def cosine(max_length: int = 1024, min_value_correct: float = 0.5, max_value_correct: float = 1.0,
           min_value_wrong: float = -1.0, max_value_wrong: float = -0.5, answer_field: str = "answer",
           unit: str = "tokens", fallback_last_number: bool = True):
    """Cosine-scaled correctness (see :func:`cosine_scaled`); None where correctness is."""
    _check_unit("cosine", unit)
    if not (isinstance(max_length, int) and max_length > 0):
        raise ValueError(f"cosine: max_length must be a positive integer, got {max_length!r}")
    if not (min_value_correct <= max_value_correct and min_value_wrong <= max_value_wrong):
        raise ValueError("cosine: each min_value must not exceed its max_value")
    is_correct = accuracy(answer_field=answer_field, fallback_last_number=fallback_last_number)

    def reward(completions: list[str], **columns) -> list[float | None]:
        correct = is_correct(completions, **columns)
        return [None if ok is None else cosine_scaled(n, ok > 0, max_length, (min_value_correct, max_value_correct),
                                                      (min_value_wrong, max_value_wrong))
                for n, ok in zip(lengths(completions, columns, unit), correct)]

    return reward


def repetition_penalty(text: str, ngram_size: int, max_penalty: float, unit: str = "words") -> float:
    """``max_penalty`` times the share of repeated n-grams: ``1 - distinct / total`` over the text's
    n-grams of words (or characters, for scripts without spaces). 0 for a text shorter than one n-gram.
    Example: "a b a b a b" with bigrams: 5 bigrams, 2 distinct -> 0.6 * max_penalty."""
    items = text.lower().split() if unit == "words" else [c for c in text if not c.isspace()]
    if len(items) < ngram_size:
        return 0.0
    grams = [tuple(items[i:i + ngram_size]) for i in range(len(items) - ngram_size + 1)]
    return (1.0 - len(set(grams)) / len(grams)) * max_penalty


@register_reward("repetition")
def repetition(ngram_size: int = 3, max_penalty: float = -1.0, unit: str = "words"):
    """N-gram repetition penalty (see :func:`repetition_penalty`), in [max_penalty, 0]."""
    if not (isinstance(ngram_size, int) and ngram_size >= 1):
        raise ValueError(f"repetition: ngram_size must be a positive integer, got {ngram_size!r}")
    if max_penalty > 0:
        raise ValueError(f"repetition: max_penalty must be <= 0, got {max_penalty!r}")
    if unit not in ("words", "chars"):
        raise ValueError(f"repetition: unit must be 'words' or 'chars', got {unit!r}")

    def reward(completions: list[str], **columns) -> list[float]:
        return [repetition_penalty(c, ngram_size, max_penalty, unit) for c in completions]

    return reward
