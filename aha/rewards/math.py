"""Math answer extraction and the ``accuracy`` reward (equivalence checked by math-verify)."""

from __future__ import annotations

import re
import threading

from aha.rewards.registry import register_reward

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
MAX_ANSWER_CHARS = 200


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
    last number in the text. None when there is none."""
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
    """Gold answers as datasets store them: GSM8K's ``#### 42`` tail, JSON floats ``27.0``, ``"025"``."""
    if isinstance(answer, float) and answer.is_integer():
        return str(int(answer))
    text = str(answer).strip()
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip()
    return text


def _timeouts() -> dict:
    # math-verify bounds its time with signal.alarm, which only works in the main thread.
    if threading.current_thread() is threading.main_thread():
        return {}
    return {"parsing_timeout": None}


def answers_equal(predicted: str, gold: str) -> bool:
    """True when the two answers are mathematically equal (math-verify), or identical as strings."""
    from math_verify import parse, verify

    if predicted.strip() == gold.strip():
        return True
    kw = _timeouts()
    gold_parsed = parse(f"${gold}$", **kw) or parse(gold, **kw)
    pred_parsed = parse(f"${predicted}$", **kw) or parse(predicted, **kw)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, **({} if not kw else {"timeout_seconds": None})))


@register_reward("accuracy")
def accuracy(answer_field: str = "answer", fallback_last_number: bool = False):
    """1.0 when the completion's final answer equals the gold answer, else 0.0; None if there is no gold.

    fallback_last_number: with no ``<answer>`` tag and no ``\\boxed{}``, take the last number.
    """

    def reward(completions: list[str], **columns) -> list[float | None]:
        if answer_field not in columns:
            raise KeyError(f"accuracy reward needs the dataset column {answer_field!r}; have {sorted(columns)}")
        scores: list[float | None] = []
        for completion, gold in zip(completions, columns[answer_field]):
            if gold is None or str(gold).strip() == "":
                scores.append(None)
                continue
            predicted = extract_answer(completion, fallback_last_number)
            if predicted is None or not predicted or len(predicted) > MAX_ANSWER_CHARS:
                scores.append(0.0)
                continue
            scores.append(1.0 if answers_equal(predicted, normalise_gold(gold)) else 0.0)
        return scores

    return reward
