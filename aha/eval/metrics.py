"""The paper's evaluation metrics: pass@1 averaged over k samples, the unbiased pass@k, and cons@k
(majority vote over the k extracted answers, equivalent answers pooled into one vote).

All functions here are pure; the grader they use for equivalence is :func:`aha.rewards.answers_equal`,
the same one that pays the training reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from aha.rewards import answers_equal
from aha.utils.stats import mean, standard_error


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from ``n`` samples of which ``c`` are correct: 1 - C(n-c, k) / C(n, k).

    The chance that a random subset of k of the n samples holds at least one correct one. Computed as a
    product so that large n does not overflow: C(n-c, k)/C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i).

    >>> pass_at_k(4, 1, 2)   # 1 - C(3,2)/C(4,2) = 1 - 3/6
    0.5
    """
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


@dataclass
class AnswerClass:
    """Answers judged equivalent to one representative (the first that appeared)."""

    representative: str
    first_index: int
    """Position of the representative in the list voted on."""
    count: int


def answer_classes(answers: Iterable[str | None],
                   equal: Callable[[str, str], bool] = answers_equal) -> list[AnswerClass]:
    """Pool answers into classes of equivalent ones; None and blank answers cast no vote.

    Each answer joins the first class whose representative it equals (identical strings are pooled
    without calling ``equal``), else starts a new class.
    """
    classes: list[AnswerClass] = []
    by_text: dict[str, AnswerClass] = {}
    for index, answer in enumerate(answers):
        if answer is None or not str(answer).strip():
            continue
        key = str(answer).strip()
        found = by_text.get(key)
        if found is None:
            found = next((c for c in classes if equal(key, c.representative)), None)
        if found is None:
            found = AnswerClass(key, index, 0)
            classes.append(found)
        found.count += 1
        by_text[key] = found
    return classes


def majority_vote(answers: list[str | None], equal: Callable[[str, str], bool] = answers_equal) -> str | None:
    """One representative of the largest class of equivalent answers; ties go to the class that appeared
    first; None when no answer votes.

    >>> majority_vote(["0.5", "3", "\\\\frac{1}{2}"])     # 0.5 and 1/2 pool into one class of 2 votes
    '0.5'
    """
    winner = vote_winner(answers, equal)
    return winner.representative if winner else None


def vote_winner(answers: list[str | None], equal: Callable[[str, str], bool] = answers_equal) -> AnswerClass | None:
    """The winning class of :func:`majority_vote` (its representative, first index and votes)."""
    best: AnswerClass | None = None
    for cls in answer_classes(answers, equal):  # classes come in order of first appearance
        if best is None or cls.count > best.count:
            best = cls
    return best


def benchmark_metrics(samples: list[dict[str, Any]], votes: dict[int, bool | None],
                      pass_ks: list[int]) -> dict[str, Any]:
    """Per-benchmark metrics from graded samples (see docs/evaluation.md for the definitions).

    samples: records with ``problem``, ``correct``, ``tokens``, ``finish_reason``, ``format``, ``extracted``.
    votes: problem index -> whether its majority-voted answer is correct (None: no answer to vote for,
    counted as wrong; a benchmark without votes, such as code, reports cons@k as None).
    """
    by_problem: dict[int, list[dict[str, Any]]] = {}
    for sample in samples:
        by_problem.setdefault(sample["problem"], []).append(sample)
    per_problem_counts = [(len(group), sum(bool(s["correct"]) for s in group)) for group in by_problem.values()]
    k = max((n for n, _ in per_problem_counts), default=0)
    metrics: dict[str, Any] = {
        "problems": len(by_problem),
        "samples": len(samples),
        "k": k,
        "pass@1": mean([c / n for n, c in per_problem_counts]),
        "pass@1_stderr": standard_error([c / n for n, c in per_problem_counts]),
    }
    for kk in sorted(set(pass_ks) | ({k} if k else set())):
        usable = [(n, c) for n, c in per_problem_counts if kk <= n]
        if kk > 1 and len(usable) == len(per_problem_counts):
            metrics[f"pass@{kk}"] = mean([pass_at_k(n, c, kk) for n, c in usable])
    if votes:
        metrics[f"cons@{k}"] = mean([1.0 if votes.get(p) else 0.0 for p in by_problem])
    metrics.update({
        "mean_response_tokens": mean([float(s["tokens"]) for s in samples]),
        "truncation_rate": mean([1.0 if s["finish_reason"] == "length" else 0.0 for s in samples]),
        "format_rate": mean([1.0 if s["format"] else 0.0 for s in samples]),
        "no_answer_rate": mean([1.0 if s.get("extracted") in (None, "") else 0.0 for s in samples]),
        "ungraded": sum(s.get("score") is None for s in samples),
    })
    return metrics
