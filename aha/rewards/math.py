"""Math answer extraction and the ``accuracy`` reward (equivalence checked by math-verify).

Gold answers come in the shapes their datasets left them (see ``../shared/data``): GSM8K's worked solution
ending ``#### 42``, zero-padded AIME strings ``"025"``, JSON floats ``27.0``, ASDiv's ``"9 (apples)"``,
MATH's LaTeX, Minerva's full solution with a ``\\boxed{}``. :func:`normalise_gold` reduces each to the
answer itself; :func:`answers_equal` compares with math-verify in a worker process with a hard time-out.
"""

from __future__ import annotations

import re

from aha.rewards.registry import register_reward, report_failure
from aha.rewards.verifier import shared_verifier

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


def extract_answer(text: str, fallback_last_number: bool = False) -> str | None:
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


def answers_equal(predicted: str, gold: str) -> bool:
    """True when the two answers are mathematically equal (math-verify, with a hard time-out; a pair that
    times out counts as not equal), or identical as strings."""
    return bool(shared_verifier().equal_many([(predicted, gold)])[0])


def gradable(predicted: str | None) -> bool:
    """An extracted answer worth verifying: present, not empty, not oversized."""
    return predicted is not None and bool(predicted.strip()) and len(predicted) <= MAX_ANSWER_CHARS


@register_reward("accuracy")
def accuracy(answer_field: str = "answer", fallback_last_number: bool = False, timeout: float = 5.0,
             workers: int = 1):
    """1.0 when the completion's final answer equals the gold answer, else 0.0; None where there is no
    gold answer, or where verification timed out (reported as a failure).

    answer_field: the dataset column with the gold answer. fallback_last_number: with no ``<answer>`` tag
    and no ``\\boxed{}``, take the last number. timeout: seconds per answer. workers: verifier processes.
    A completion that lists many candidates (``1, 2, 3, 4``) is a set to math-verify, unequal to a
    single gold value; an empty or oversized answer scores 0.
    """
    if not isinstance(fallback_last_number, bool):
        raise ValueError(f"accuracy: fallback_last_number must be true or false, got {fallback_last_number!r}")
    verifier = shared_verifier(timeout, workers)

    def reward(completions: list[str], **columns) -> list[float | None]:
        if answer_field not in columns:
            raise KeyError(f"accuracy reward needs the dataset column {answer_field!r}; have {sorted(columns)}")
        scores: list[float | None] = [None] * len(completions)
        pairs, owners = [], []
        for i, (completion, gold) in enumerate(zip(completions, columns[answer_field])):
            gold_text = None if gold is None else normalise_gold(gold)
            if not gold_text:
                continue  # nothing to compare with: unscorable, not wrong
            predicted = extract_answer(completion, fallback_last_number)
            if not gradable(predicted):
                scores[i] = 0.0
                continue
            pairs.append((predicted, gold_text))
            owners.append(i)
        reasons: dict[int, str] = {}
        for k, equal in enumerate(verifier.equal_many(pairs, reasons)):
            scores[owners[k]] = None if equal is None else float(equal)
            if k in reasons and equal is None:
                report_failure(owners[k], reasons[k])
        return scores

    return reward
