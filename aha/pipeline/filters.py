"""The readability filters of rejection sampling, as R1 applies them to its RL model's samples: a kept trace
is verified, has the reasoning structure, is written in one language, does not repeat itself, has no
walls of text, and has no code where none belongs. Each filter is a pure function of the text that returns
None (keep) or a short reason (drop).
"""

from __future__ import annotations

import re
from typing import Callable

from aha.config.generate import FilterSection
from aha.rewards.format import follows_format
from aha.rewards.language import chain_of_thought, language_share, words
from aha.rewards.length import repetition_penalty

_R1_PATTERN = "{d}(.+?){d}(.+)"
_BOXED_OR_LINE = re.compile(r"</think>\s*\S", re.DOTALL)
_FENCE = re.compile(r"```")


def structure_problem(text: str, required: str, delimiter: str = "|special_token|") -> str | None:
    """think: a closed <think> block then an answer; r1: |special_token|reasoning|special_token|summary."""
    if required == "none":
        return None
    if required == "r1":
        pattern = re.compile(_R1_PATTERN.format(d=re.escape(delimiter)), re.DOTALL)
        return None if pattern.fullmatch(text.strip()) else "no |special_token| reasoning and summary"
    if follows_format(text, strict=False) or (text.lstrip().startswith("<think>") and _BOXED_OR_LINE.search(text)):
        return None
    return "no <think>…</think> followed by an answer"


def language_problem(text: str, language: str | None, min_share: float) -> str | None:
    """Too few of the reasoning's words in ``language``'s script; a trace without words (only numbers and
    symbols) mixes nothing."""
    thought = chain_of_thought(text)
    if language is None or not words(thought):
        return None
    share = language_share(thought, language)
    return None if share >= min_share else f"{100 * share:.0f}% of the words in {language}"


def repetition_problem(text: str, max_share: float) -> str | None:
    if max_share >= 1:
        return None
    share = -repetition_penalty(text, 4, -1.0)
    return None if share <= max_share else f"{100 * share:.0f}% of its 4-grams repeat"


def paragraph_problem(text: str, max_chars: int) -> str | None:
    if not max_chars:
        return None
    longest = max((len(p) for p in re.split(r"\n\s*\n", text)), default=0)
    return None if longest <= max_chars else f"a paragraph of {longest} characters"


def code_problem(text: str, allow_code: bool) -> str | None:
    return None if allow_code or not _FENCE.search(text) else "a code block"


READABILITY: list[tuple[str, Callable[[str, FilterSection], str | None]]] = [
    ("no_structure", lambda t, c: structure_problem(t, c.require_format)),
    ("mixed_language", lambda t, c: language_problem(t, c.language, c.min_language_share)),
    ("repetitive", lambda t, c: repetition_problem(t, c.max_repetition)),
    ("long_paragraph", lambda t, c: paragraph_problem(t, c.max_paragraph_chars)),
    ("unexpected_code", lambda t, c: code_problem(t, c.allow_code)),
]
"""The readability filters in the order they run; the first that objects names why a trace is dropped."""


def normalised(text: str) -> str:
    """Text compared for duplicates: whitespace collapsed, lower case."""
    return " ".join(text.split()).lower()
