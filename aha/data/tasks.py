"""Prompt sources for training: built-in procedural tasks and datasets, each with a held-out eval set.

A task hands out training examples by index, deterministically (``example(i)`` is a pure function of
the seed and ``i``), so a resumed run sees exactly the prompts an uninterrupted one would. Examples are
dicts with at least ``question`` and ``answer``; every key is passed to rewards as a column. A task names
the reward that grades its answers (``accuracy`` for math): held-out evaluation uses it, as ``aha eval``
does for a benchmark.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

from aha.data.records import DataError, load_records
from aha.utils.registry import Registry

TASKS: Registry = Registry("task")

EVAL_SEED = 1_000_003  # fixed: the held-out set does not move with the training seed


class Task(ABC):
    """Training examples by index and a fixed held-out evaluation set never trained on."""

    name: str = "task"
    reward: str = "accuracy"
    """The registered reward that grades an answer to this task (held-out evaluation)."""
    reward_options: tuple[tuple[str, Any], ...] = ()
    skipped: tuple[str, ...] | list[str] = ()
    """``file:line: problem`` of each dataset row skipped with on_error=skip."""

    @abstractmethod
    def example(self, index: int) -> dict[str, Any]:
        """Training example number ``index`` (a pure function of the task's seed and ``index``)."""

    @abstractmethod
    def eval_examples(self) -> list[dict[str, Any]]:
        """The fixed held-out set."""

    # A task that can judge reasoning steps (process supervision) also defines
    #     step_rewards(examples, generations) -> list[list[tuple[int, float]]]
    # giving, for each completion, ``(last token index, reward)`` of each of its steps.

    @property
    def has_step_rewards(self) -> bool:
        """Whether the task defines ``step_rewards`` (needed by ``advantage_estimator: process``)."""
        return callable(getattr(self, "step_rewards", None))

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
    defaults = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1}
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
              field_map: dict[str, str] | None = None, eval_dataset: str | None = None,
              on_error: str = "raise") -> Task:
    """A built-in task by name, or a dataset of question/answer records (a file, a folder of files or a hub
    name; ``field_map`` renames its fields, ``eval_dataset`` gives a separate held-out set).

    Raises ``ValueError`` for an unknown task or bad options and ``DataError`` (``file:line: ...``) for a
    dataset that cannot be used; every row is checked before any is used (``on_error="skip"``: a bad row is
    skipped and counted in ``Task.skipped``)."""
    options = dict(options or {})
    if name in TASKS:
        if field_map or eval_dataset:
            raise ValueError(f"task {name!r} is built in: field_map and eval_dataset apply to datasets only")
        factory: Callable[..., Task] = TASKS.get(name)
        return factory(options, eval_size, seed)
    if not looks_like_dataset(name):
        raise ValueError(f"unknown task {name!r}; built in: {', '.join(TASKS.names())}, or give a dataset "
                         "(.jsonl, .json, .csv, .parquet file, folder or hub name)")
    if options:
        raise ValueError(f"task_options apply to built-in tasks; {name} is a dataset")
    loaded = load_records(name, field_map, split="train", on_error=on_error)
    records, skipped = loaded.records, list(loaded.skipped)
    if eval_dataset:
        held = load_records(eval_dataset, field_map, on_error=on_error)
        heldout, skipped = held.records, skipped + held.skipped
    else:
        if eval_size >= len(records):
            raise DataError(f"{name}: eval_size={eval_size} leaves no training rows out of {len(records)}")
        records, heldout = records[: len(records) - eval_size], records[len(records) - eval_size :]
    task = RecordsTask(records, heldout[:eval_size] if eval_size else [], seed, name)
    task.skipped = skipped
    return task


def looks_like_dataset(name: str) -> bool:
    """A dataset source rather than a task name: an existing path, a data file name, or ``org/name``."""
    from pathlib import Path

    from aha.data.readers import file_format, looks_like_hub_name

    return Path(name).exists() or file_format(Path(name)) is not None or looks_like_hub_name(name)
