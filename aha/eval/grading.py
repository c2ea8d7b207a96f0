"""Grading completions with the training rewards, in worker processes while generation goes on.

A completion is correct when the benchmark's reward (``accuracy`` for math, ``code`` for programs) pays
it a positive score: the same grader, with the same options, as the one that trains. Rewards are built
inside each worker (``get_reward`` by name), so nothing but plain data crosses process boundaries.
math-verify bounds its time with ``signal.alarm``, which works in a worker's main thread.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aha.answers import extract_answer
from aha.config import ConfigError
from aha.eval.metrics import vote_winner
from aha.rewards import REWARDS, RewardTerm, follows_format, get_reward, score


@dataclass(frozen=True)
class GradeSpec:
    """Which reward grades a benchmark, with its options."""

    reward: str = "accuracy"
    options: tuple[tuple[str, Any], ...] = ()
    fallback_last_number: bool = True
    """Answer extraction for the recorded answer and the vote: with no ``<answer>`` tag or ``\\boxed{}``,
    take the last number (the same option is passed to the accuracy reward)."""

    @property
    def votes(self) -> bool:
        """Whether extracted answers can be majority-voted (math answers yes, programs no)."""
        return self.reward == "accuracy"


def grade_spec(reward: str, options: tuple[tuple[str, Any], ...] = (), fallback_last_number: bool = True) -> GradeSpec:
    """How to grade answers that ``reward`` (with ``options``) pays: a benchmark's, or a training task's."""
    if reward == "accuracy":
        return GradeSpec("accuracy", (("fallback_last_number", fallback_last_number), *options), fallback_last_number)
    return GradeSpec(reward, options, fallback_last_number)


def check_reward_exists(spec: GradeSpec, benchmark: str) -> None:
    """Fail early, with the valid names, when a benchmark's reward is not registered in this installation."""
    if spec.reward not in REWARDS:
        raise ConfigError(f"benchmark {benchmark!r} is graded by the {spec.reward!r} reward, which this installation "
                         f"does not have; registered rewards: {', '.join(REWARDS.names())}")


_REWARD_CACHE: dict[GradeSpec, RewardTerm] = {}


def _term(spec: GradeSpec) -> RewardTerm:
    if spec not in _REWARD_CACHE:
        _REWARD_CACHE[spec] = RewardTerm(spec.reward, get_reward(spec.reward, **dict(spec.options)), 1.0)
    return _REWARD_CACHE[spec]


def grade(spec: GradeSpec, completions: list[str], columns: dict[str, list]) -> list[dict[str, Any]]:
    """Score each completion: ``{score, correct, extracted, format}`` (score None: the grader could not)."""
    result = score([_term(spec)], completions, columns)
    values = result.per_reward[spec.reward]
    graded = []
    for completion, value in zip(completions, values):
        extracted = extract_answer(completion, spec.fallback_last_number) if spec.votes else None
        value = None if value is None else float(value)
        graded.append({"extracted": extracted, "score": value, "correct": bool(value is not None and value > 0),
                       "format": follows_format(completion, strict=True)})
    return graded


def vote(answers: list[str | None]) -> int | None:
    """Index of the majority-voted answer's first appearance (see :func:`aha.eval.metrics.majority_vote`)."""
    winner = vote_winner(answers)
    return winner.first_index if winner else None


class _InlineExecutor(Executor):
    """Runs each job at once in the calling thread (workers=0: tests, debugging)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # delivered through the future, as a pool would
            future.set_exception(err)
        return future


@dataclass
class Grader:
    """Grading jobs, run by ``workers`` processes (0: inline in this process)."""

    workers: int = 1
    _executor: Executor = field(init=False, repr=False)

    def __post_init__(self):
        if self.workers > 0:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
            self._executor = ProcessPoolExecutor(self.workers, mp_context=context)
        else:
            self._executor = _InlineExecutor()

    def submit(self, spec: GradeSpec, completions: list[str], columns: dict[str, list]) -> Future:
        return self._executor.submit(grade, spec, completions, columns)

    def votes(self, answer_lists: list[list[str | None]]) -> list[int | None]:
        """The vote winner's index for each list of answers, computed in parallel."""
        return [f.result() for f in [self._executor.submit(vote, answers) for answers in answer_lists]]

    def close(self, cancel: bool = False) -> None:
        self._executor.shutdown(wait=not cancel, cancel_futures=cancel)

    def __enter__(self) -> "Grader":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close(cancel=exc_type is not None)
