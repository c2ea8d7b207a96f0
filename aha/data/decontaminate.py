"""N-gram decontamination: which training questions share an n-gram of words with a benchmark question.

Texts are compared as lower-cased word sequences (``\\w+`` runs, punctuation and LaTeX markup ignored).
A training row is contaminated when it shares any n-gram (default n = 8, as in open-r1; GPT-3 used 13)
with a benchmark question; a question shorter than n words counts as one n-gram of its own length, so
short benchmark questions are not invisible to the check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The word n-grams of ``text`` (the whole word sequence when it is shorter than n words)."""
    tokens = words(text)
    if not tokens:
        return set()
    if len(tokens) < n:
        return {tuple(tokens)}
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


@dataclass
class Match:
    """A training row that shares an n-gram with a benchmark problem."""

    train_index: int
    benchmark: str
    problem_index: int
    ngram: str


@dataclass
class DecontaminationReport:
    n: int
    train_rows: int
    matches: list[Match] = field(default_factory=list)
    benchmark_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def contaminated_rows(self) -> list[int]:
        """Indices of the training rows that share an n-gram with any benchmark, ascending."""
        return sorted({m.train_index for m in self.matches})

    def per_benchmark(self) -> dict[str, dict[str, int]]:
        """For each benchmark: how many of its problems appear in training, and how many training rows hit it."""
        out = {}
        for name, size in self.benchmark_sizes.items():
            hits = [m for m in self.matches if m.benchmark == name]
            out[name] = {"problems": size, "problems_seen_in_training": len({m.problem_index for m in hits}),
                         "training_rows": len({m.train_index for m in hits})}
        return out


def find_contamination(train_questions: list[str], benchmarks: dict[str, list[str]],
                       n: int = 8) -> DecontaminationReport:
    """Every (training row, benchmark problem) pair that shares a word n-gram; the first shared n-gram is kept."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    index: dict[tuple[str, ...], list[tuple[str, int]]] = {}
    report = DecontaminationReport(n, len(train_questions))
    for name, questions in benchmarks.items():
        report.benchmark_sizes[name] = len(questions)
        for p, question in enumerate(questions):
            for gram in ngrams(question, n):
                index.setdefault(gram, []).append((name, p))
    for t, question in enumerate(train_questions):
        seen: set[tuple[str, int]] = set()
        for gram in sorted(ngrams(question, n)):
            for hit in index.get(gram, ()):
                if hit not in seen:
                    seen.add(hit)
                    report.matches.append(Match(t, hit[0], hit[1], " ".join(gram)))
    return report


def without_rows(records: Iterable[dict[str, Any]], drop: Iterable[int]) -> list[dict[str, Any]]:
    """The records whose positions are not in ``drop``."""
    dropped = set(drop)
    return [r for i, r in enumerate(records) if i not in dropped]
