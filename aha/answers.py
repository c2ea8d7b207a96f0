"""Final answers in text: extracting a completion's answer and reducing a dataset's gold answer to the
answer itself. Plain text functions, used by the rewards, the benchmarks and evaluation alike.

Gold answers come in the shapes their datasets left them (see ``../shared/data``): GSM8K's worked solution
ending ``#### 42``, zero-padded AIME strings ``"025"``, JSON floats ``27.0``, ASDiv's ``"9 (apples)"``,
MATH's LaTeX, Minerva's full solution with a ``\\boxed{}``.
"""

from __future__ import annotations

import re

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_UNIT_SUFFIX = re.compile(r"^(.*?\S)\s*\([A-Za-z][A-Za-z .'-]*\)$")  # "9 (apples)" -> "9"
_PADDED_INTEGER = re.compile(r"^0+(\d+)$")
MAX_ANSWER_CHARS = 200
"""Longer extracted answers score 0: an answer is a value, not an essay (and math-verify's time grows
with its input)."""


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (braces balanced), or None."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def extract_answer(text: str, fallback_last_number: bool = True) -> str | None:
    """The final answer: the last ``<answer>…</answer>``, else the last ``\\boxed{}``, else (option) the
    last number in the text. None when there is none.

    >>> extract_answer("<think>2+2</think><answer>4</answer>"), extract_answer("so \\\\boxed{\\\\frac12}.")
    ('4', '\\\\frac12')
    """
    tagged = _ANSWER_TAG.findall(text)
    if tagged:
        return tagged[-1].strip()
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    if fallback_last_number:
        numbers = _NUMBER.findall(text)
        if numbers:
            return numbers[-1].replace(",", "")
    return None


def normalise_gold(answer: object) -> str:
    """A gold answer as datasets store it, reduced to the answer: ``27.0`` -> ``27``, ``"025"`` -> ``25``,
    ``"… #### 1,000"`` -> ``1000``, ``"9 (apples)"`` -> ``9``, a solution with ``\\boxed{x}`` -> ``x``.

    >>> [normalise_gold(g) for g in (27.0, "025", "so #### 1,000", "9 (apples)", "hence $\\\\boxed{3}$")]
    ['27', '25', '1000', '9', '3']
    """
    if isinstance(answer, bool):
        return str(answer)
    if isinstance(answer, float) and answer.is_integer():
        return str(int(answer))
    text = str(answer).strip()
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip().replace(",", "")
    elif "\\boxed" in text:
        text = (last_boxed(text) or text).strip()
    unit = _UNIT_SUFFIX.match(text)
    if unit and not re.search(r"[A-Za-z\\]", unit.group(1)):  # a value followed by its unit in words
        text = unit.group(1)
    padded = _PADDED_INTEGER.match(text)
    if padded:
        text = padded.group(1)
    return text


def gradable(predicted: str | None) -> bool:
    """An extracted answer worth verifying: present, not empty, not oversized."""
    return predicted is not None and bool(predicted.strip()) and len(predicted) <= MAX_ANSWER_CHARS
