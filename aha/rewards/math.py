"""The ``accuracy`` reward: the completion's final answer (see :mod:`aha.answers`) against the gold answer,
equivalence checked by math-verify in a worker process with a hard time-out (:func:`answers_equal`)."""

from __future__ import annotations

from aha.answers import extract_answer, gradable, normalise_gold
from aha.rewards.registry import register_reward, report_failure
from aha.rewards.verifier import shared_verifier


def answers_equal(predicted: str, gold: str) -> bool:
    """True when the two answers are mathematically equal (math-verify, with a hard time-out; a pair that
    times out counts as not equal), or identical as strings."""
    return bool(shared_verifier().equal_many([(predicted, gold)])[0])


@register_reward("accuracy")
def accuracy(answer_field: str = "answer", fallback_last_number: bool = True, timeout: float = 5.0,
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
