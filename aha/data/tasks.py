"""Prompt sources for training: built-in procedural tasks and datasets, each with a held-out eval set.

A task hands out training examples by index, deterministically (``example(i)`` is a pure function of
the seed and ``i``), so a resumed run sees exactly the prompts an uninterrupted one would. Examples are
dicts with at least ``question`` and ``answer``; every key is passed to rewards as a column.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

from aha.algorithms.registry import Registry
from aha.data.records import load_jsonl

TASKS: Registry = Registry("task")

EVAL_SEED = 1_000_003  # fixed: the held-out set does not move with the training seed


class Task(ABC):
    """Training examples by index and a fixed held-out evaluation set never trained on."""

    name: str = "task"

    @abstractmethod
    def example(self, index: int) -> dict[str, Any]:
        """Training example number ``index`` (a pure function of the task's seed and ``index``)."""

    @abstractmethod
    def eval_examples(self) -> list[dict[str, Any]]:
        """The fixed held-out set."""

    def batch(self, step: int, size: int) -> list[dict[str, Any]]:
        """The ``size`` prompts of training step ``step``."""
        return [self.example(step * size + i) for i in range(size)]


@dataclass
class ReasoningGymTask(Task):
    """A reasoning-gym generator: training items are drawn from one seed, the held-out set from another,
    and any training item whose question is in the held-out set is skipped."""

    dataset: str
    options: dict[str, Any]
    eval_size: int
    seed: int = 0
    name: str = field(init=False)
    _heldout: list[dict[str, Any]] = field(init=False, repr=False)
    _train_index: list[int] = field(init=False, repr=False, default_factory=list)

    def __post_init__(self):
        import reasoning_gym

        self.name = self.dataset
        try:
            self._eval_source = reasoning_gym.create_dataset(self.dataset, seed=EVAL_SEED, size=100_000,
                                                            **self.options)
            self._train_source = reasoning_gym.create_dataset(self.dataset, seed=self.seed, size=10**9,
                                                             **self.options)
        except (TypeError, AssertionError, ValueError) as err:
            raise ValueError(f"task {self.dataset!r} with options {self.options}: {err}") from None
        seen: set[str] = set()
        heldout: list[dict[str, Any]] = []
        for i in range(len(self._eval_source)):
            item = self._eval_source[i]
            if item["question"] not in seen:
                seen.add(item["question"])
                heldout.append(self._record(item))
            if len(heldout) == self.eval_size or i > 50 * self.eval_size:
                break
        self._heldout = heldout
        self._heldout_questions = seen

    def _record(self, item: dict) -> dict[str, Any]:
        return {"question": item["question"], "answer": str(item["answer"])}

    def example(self, index: int) -> dict[str, Any]:
        # Walk the training stream, skipping held-out questions; remember the mapping for speed.
        position = self._train_index[-1] + 1 if self._train_index else 0
        while len(self._train_index) <= index:
            if self._train_source[position]["question"] not in self._heldout_questions:
                self._train_index.append(position)
            position += 1
            if position > 1000 * (index + 1) + 10_000:
                raise ValueError(f"task {self.dataset!r}: every generated problem is in the held-out set; "
                                 "make the task harder or eval_size smaller")
        return self._record(self._train_source[self._train_index[index]])

    def eval_examples(self) -> list[dict[str, Any]]:
        return list(self._heldout)


@TASKS.register("chain_sum")
def chain_sum(options: dict[str, Any], eval_size: int, seed: int) -> Task:
    """Multi-step integer arithmetic (``4 - 7 + 2 =``), from reasoning-gym. Difficulty options:
    min_terms, max_terms, min_digits, max_digits, allow_negation."""
    defaults = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    return ReasoningGymTask("chain_sum", {**defaults, **options}, eval_size, seed)


@dataclass
class RecordsTask(Task):
    """Training rows from a file, shuffled per epoch; the held-out set is a separate file, or the last
    ``eval_size`` rows of the training file (which are then never trained on)."""

    records: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    seed: int = 0
    name: str = "records"

    def example(self, index: int) -> dict[str, Any]:
        epoch, offset = divmod(index, len(self.records))
        order = list(range(len(self.records)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return dict(self.records[order[offset]])

    def eval_examples(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.heldout]


def make_task(name: str, options: dict[str, Any] | None = None, eval_size: int = 100, seed: int = 0,
              field_map: dict[str, str] | None = None, eval_dataset: str | None = None) -> Task:
    """A built-in task by name, or a JSONL file path (with ``field_map`` and optional ``eval_dataset``)."""
    options = dict(options or {})
    if name.endswith(".jsonl"):
        records = load_jsonl(name, field_map)
        if eval_dataset:
            heldout = load_jsonl(eval_dataset, field_map)
        else:
            if eval_size >= len(records):
                raise ValueError(f"{name}: eval_size={eval_size} leaves no training rows out of {len(records)}")
            records, heldout = records[: len(records) - eval_size], records[len(records) - eval_size :]
        return RecordsTask(records, heldout[:eval_size] if eval_size else heldout, seed, name)
    factory: Callable[..., Task] = TASKS.get(name)
    return factory(options, eval_size, seed)
