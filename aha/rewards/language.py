"""The ``language`` reward: DeepSeek-R1's language-consistency reward, the share of the chain of thought
written in the target language, measured as words in the target script over all words.

Words are runs of letters of one script; each CJK ideograph, kana or Hangul syllable counts as one word
(those scripts do not separate words with spaces). Digits, symbols and LaTeX commands' backslashes are
not words; LaTeX command names (``\\frac``) are skipped too, so that mathematics does not count as English.
"""

from __future__ import annotations

import re

from aha.rewards.registry import register_reward

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\u1100-\u11ff"
_WORD = re.compile(rf"\\[A-Za-z]+|[{_CJK}]|[A-Za-z\u00c0-\u024f]+|[\u0400-\u04ff]+|[^\W\d_{_CJK}]+")
_TAG = re.compile(r"</?[A-Za-z_]+>")
_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
SCRIPTS = {
    "latin": re.compile(r"[A-Za-z\u00c0-\u024f]"),
    "han": re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"),
    "kana": re.compile(r"[\u3040-\u30ff]"),
    "hangul": re.compile(r"[\uac00-\ud7af\u1100-\u11ff]"),
    "cyrillic": re.compile(r"[\u0400-\u04ff]"),
}
LANGUAGES = {"en": ("latin",), "fr": ("latin",), "de": ("latin",), "es": ("latin",), "it": ("latin",),
             "pt": ("latin",), "zh": ("han",), "ja": ("han", "kana"), "ko": ("hangul",), "ru": ("cyrillic",)}


def words(text: str) -> list[str]:
    """The words of ``text`` (see the module docstring); LaTeX commands and tags like ``<think>`` are
    dropped.

    >>> words("So x = 3, 所以答案 \\\\frac{1}{2}")
    ['So', 'x', '所', '以', '答', '案']
    """
    return [w for w in _WORD.findall(_TAG.sub(" ", text)) if not w.startswith("\\")]


def script_of(word: str) -> str:
    """The script of a word, by its first letter: one of SCRIPTS, or ``other``."""
    for name, pattern in SCRIPTS.items():
        if pattern.match(word):
            return name
    return "other"


def language_share(text: str, language: str) -> float:
    """Share of the words of ``text`` written in the script(s) of ``language`` (0.0 when it has none)."""
    found = words(text)
    if not found:
        return 0.0
    scripts = LANGUAGES[language]
    return sum(script_of(w) in scripts for w in found) / len(found)


def chain_of_thought(completion: str) -> str:
    """The ``<think>`` part of a completion (up to ``</think>`` or the end), else the whole completion."""
    match = _THINK.search(completion)
    return match.group(1) if match else completion


@register_reward("language")
def language(target: str = "en", scope: str = "think"):
    """Share of the chain of thought in the ``target`` language (en, fr, de, es, it, pt: Latin script;
    zh: Han; ja: Han and kana; ko: Hangul; ru: Cyrillic), in [0, 1].

    scope: ``think`` scores the ``<think>`` part (the whole completion when there is none), ``all`` the
    whole completion.
    """
    if target not in LANGUAGES:
        raise ValueError(f"language: unknown target {target!r}; known: {', '.join(sorted(LANGUAGES))}")
    if scope not in ("think", "all"):
        raise ValueError(f"language: scope must be 'think' or 'all', got {scope!r}")

    def reward(completions: list[str], **columns) -> list[float]:
        return [language_share(chain_of_thought(c) if scope == "think" else c, target) for c in completions]

    return reward
