"""What the paper watched during R1-Zero training, measured on each step's rollouts: how long the responses are
(right and wrong apart), how often they reflect ("wait", "let me check", "等等"), whether reflective answers
are right more often, how often they verify or backtrack, and whether they mix languages; and the step where
reflection changes regime upward (:func:`find_aha_moment`).

A *reflection phrase* is one of ``phrases`` (multilingual defaults below; a recipe may give its own list)
found as a whole word or phrase, case-insensitively. Each default phrase is either *verification* (checking
a result: "let me check", "verify") or *backtracking* (revising one: "wait", "mistake", "on second thought");
a phrase given by the user counts as reflection and as neither.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from statistics import median
from typing import Iterable, Sequence

from aha.rewards.language import chain_of_thought, script_of, words

VERIFICATION = ("let me check", "let me verify", "let's check", "let's verify", "double-check", "double check",
                "verify", "verifying", "re-check", "recheck", "check again", "confirm", "sanity check",
                "vérifions", "vérifier", "verifiquemos", "comprobemos", "überprüfen", "prüfen wir",
                "проверим", "检查", "验证", "確認", "検証", "확인")
BACKTRACKING = ("wait", "hmm", "mistake", "on second thought", "let me reconsider", "reconsider", "re-evaluate",
                "reevaluate", "let me redo", "that's wrong", "that is wrong", "actually", "i was wrong",
                "attendez", "en fait", "espera", "en realidad", "moment mal", "warte", "подожди", "ошибка",
                "等等", "等一下", "不对", "重新考虑", "错了", "待って", "잠깐")
DEFAULT_PHRASES = VERIFICATION + BACKTRACKING
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


def _pattern(phrases: Iterable[str]) -> re.Pattern:
    """Whole words for alphabetic phrases (``wait`` not in ``waiter``); CJK phrases anywhere."""
    parts = []
    for phrase in sorted(set(phrases), key=len, reverse=True):
        escaped = re.escape(phrase.lower()).replace(r"\ ", r"\s+")
        parts.append(escaped if _CJK.search(phrase) else rf"(?<!\w){escaped}(?!\w)")
    return re.compile("|".join(parts), re.IGNORECASE)


class ReflectionCounter:
    """Finds reflection phrases in text (see the module docstring)."""

    def __init__(self, phrases: Sequence[str] | None = None):
        self.phrases = tuple(phrases) if phrases else DEFAULT_PHRASES
        self.any = _pattern(self.phrases)
        self.verification = _pattern(p for p in VERIFICATION if p in self.phrases)
        self.backtracking = _pattern(p for p in BACKTRACKING if p in self.phrases)
        self.has_verification = any(p in self.phrases for p in VERIFICATION)
        self.has_backtracking = any(p in self.phrases for p in BACKTRACKING)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where reflection phrases are in ``text`` (start, end), in order."""
        return [m.span() for m in self.any.finditer(text)]

    def count(self, text: str) -> tuple[int, int, int]:
        """(reflection phrases, verification phrases, backtracking phrases) in ``text``."""
        return (len(self.any.findall(text)),
                len(self.verification.findall(text)) if self.has_verification else 0,
                len(self.backtracking.findall(text)) if self.has_backtracking else 0)


def mixes_languages(text: str) -> bool:
    """Whether the chain of thought has words in more than one script (Latin and Han, say)."""
    scripts = {script_of(w) for w in words(chain_of_thought(text))} - {"other"}
    if scripts == {"han", "kana"}:  # Japanese writes both
        return False
    return len(scripts) > 1


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def rollout_stats(completions: Sequence[str], lengths: Sequence[int], correct: Sequence[bool | None] | None = None,
                  truncated: Sequence[bool] | None = None, counter: ReflectionCounter | None = None
                  ) -> dict[str, float | None]:
    """The per-step analytics of a batch of responses (``lengths`` in tokens; ``correct`` None where unknown).

    Keys: ``length/mean``, ``length/p50``, ``length/p90``, ``length/max``, ``length/correct``,
    ``length/incorrect``, ``truncated_rate``, ``reflection/rate`` (share of responses with a reflection phrase),
    ``reflection/per_1k_tokens``, ``reflection/verification`` and ``reflection/backtracking`` (phrases per
    response), ``reflection/accuracy_reflective`` and ``reflection/accuracy_plain`` (accuracy of responses
    with and without one; None when there are none), ``language_mixing`` (share whose reasoning mixes scripts).
    """
    counter = counter or ReflectionCounter()
    n = len(completions)
    if n == 0:
        return {}
    lengths = [float(x) for x in lengths]
    counts = [counter.count(c) for c in completions]
    reflective = [c[0] > 0 for c in counts]
    correct = list(correct) if correct is not None else [None] * n
    known = [(r, ok) for r, ok in zip(reflective, correct) if ok is not None]
    stats: dict[str, float | None] = {
        "length/mean": sum(lengths) / n,
        "length/p50": float(median(lengths)),
        "length/p90": _percentile(lengths, 0.9),
        "length/max": max(lengths),
        "length/correct": _mean([x for x, ok in zip(lengths, correct) if ok is True]),
        "length/incorrect": _mean([x for x, ok in zip(lengths, correct) if ok is False]),
        "reflection/rate": sum(reflective) / n,
        "reflection/per_1k_tokens": 1000.0 * sum(c[0] for c in counts) / max(sum(lengths), 1.0),
        "reflection/verification": sum(c[1] for c in counts) / n,
        "reflection/backtracking": sum(c[2] for c in counts) / n,
        "reflection/accuracy_reflective": _mean([float(ok) for r, ok in known if r]),
        "reflection/accuracy_plain": _mean([float(ok) for r, ok in known if not r]),
        "language_mixing": sum(mixes_languages(c) for c in completions) / n,
    }
    if truncated is not None:
        stats["truncated_rate"] = sum(bool(t) for t in truncated) / n
    return stats


@dataclass
class AhaMoment:
    """Where a series changes regime upward: ``index`` is the first step of the higher regime."""

    index: int
    confidence: float
    """How much better two levels explain the series than a straight line does: 1 - SSE(two levels) /
    SSE(line), in [0, 1]."""
    before: float
    """The mean of the series before ``index``."""
    after: float
    """The mean from ``index`` on."""


def _sse(values: Sequence[float]) -> float:
    if not values:
        return 0.0
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values)


def _line_sse(values: Sequence[float]) -> float:
    n = len(values)
    xs = range(n)
    mean_x = (n - 1) / 2
    mean_y = sum(values) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, values)) / sxx if sxx else 0.0
    return sum((y - (mean_y + slope * (x - mean_x))) ** 2 for x, y in zip(xs, values))


def find_aha_moment(values: Sequence[float | None], min_segment: int = 3, min_jump: float = 4.0,
                    min_confidence: float = 0.5) -> AhaMoment | None:
    """The step where ``values`` (e.g. the reflection rate per step) moves to a higher level and stays there;
    None when there is no such step.

    The series is split in two at every step leaving ``min_segment`` points on each side, and the split that
    leaves the least squared error around the two means is the candidate. It is the moment when (a) the
    level rises, by at least ``min_jump`` times the noise (the residual spread of the two-level fit, so noise
    alone does not pass), and (b) two levels explain the series much better than one straight line does
    (``confidence`` >= ``min_confidence``), so a slow steady drift is not a moment. Missing values (None) are
    left out, and the index refers to the original series.
    """
    points = [(i, float(v)) for i, v in enumerate(values) if v is not None]
    if len(points) < 2 * min_segment:
        return None
    series = [v for _, v in points]
    best = None
    for split in range(min_segment, len(series) - min_segment + 1):
        sse = _sse(series[:split]) + _sse(series[split:])
        if best is None or sse < best[1]:
            best = (split, sse)
    split, step_sse = best
    before = sum(series[:split]) / split
    after = sum(series[split:]) / (len(series) - split)
    line_sse = _line_sse(series)
    noise = (step_sse / max(len(series) - 2, 1)) ** 0.5
    jump = after - before
    if jump <= 0 or (noise > 0 and jump < min_jump * noise) or (noise == 0 and jump == 0):
        return None
    confidence = 1.0 - step_sse / line_sse if line_sse > 0 else 1.0
    if confidence < min_confidence:
        return None
    return AhaMoment(points[split][0], round(confidence, 4), before, after)
