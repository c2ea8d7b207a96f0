"""Reward registry and weighting.

A reward is a callable ``f(completions: list[str], **columns) -> list[float | None]`` (the TRL
signature): ``columns`` are the dataset's columns for the same samples (``answer=[...]``), and ``None``
means "this sample cannot be scored" (it is excluded, never counted as 0 or 1).

Rewards are made by factories registered by name; ``get_reward(name, **options)`` builds one. A recipe
picks rewards by name with weights::

    rewards:
      accuracy: 1.0                                   # weight only
      format: {weight: 0.5, requires: accuracy}       # paid only where `accuracy` is positive
      code: {weight: 1.0, time_budget: 30}            # seconds per sample before it is given up
      judged: {reward: judge, api_base: ..., when: {kind: general}}   # only samples whose `kind` column is general

``when`` routes a reward to some samples by a dataset column (``{column: value}`` or ``{column: [values]}``):
the others are not sent to it and it adds nothing to their total, so one run can mix verifiable rewards for
reasoning prompts with model rewards for general ones.

A reward that raises, or runs past its ``time_budget``, costs the samples concerned (scored None, logged,
counted in ``RewardResult.failures``), never the run. A reward that can tell why it could not score one
sample (a verifier time-out, a sandbox failure) returns None for it and calls :func:`report_failure`.
"""

from __future__ import annotations

import contextvars
import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from aha.utils.registry import Registry

log = logging.getLogger(__name__)

RewardFn = Callable[..., list]
REWARDS: Registry = Registry("reward")
_REPORTED: contextvars.ContextVar[list | None] = contextvars.ContextVar("aha_reward_failures", default=None)


def report_failure(index: int, reason: str) -> None:
    """Called by a reward that returns None for sample ``index`` because scoring it failed (not because it
    cannot be scored by nature): logged, and counted by :func:`score`."""
    log.warning("reward failed on sample %d: %s", index, reason)
    reported = _REPORTED.get()
    if reported is not None:
        reported.append(f"sample {index}: {reason}")


def register_reward(name: str):
    """Register a reward factory: ``factory(**options) -> RewardFn``."""
    return REWARDS.register(name)


def get_reward(name: str, **options: Any) -> RewardFn:
    """Build the reward registered as ``name`` with its options."""
    factory = REWARDS.get(name)
    try:
        return factory(**options)
    except TypeError as err:
        raise ValueError(f"reward {name!r}: bad options {options}: {err}") from None


@dataclass
class RewardTerm:
    """One weighted reward of a recipe."""

    label: str
    fn: RewardFn
    weight: float
    requires: str | None = None
    """Label of another term; this one is paid only where that one scored > 0."""
    time_budget: float | None = None
    """Seconds per sample before the reward is given up on (None: no budget)."""
    when: dict[str, list] | None = None
    """Column -> accepted values: the term scores only the samples that match (None: every sample)."""

    def applies(self, columns: dict[str, list], index: int) -> bool:
        if not self.when:
            return True
        return all(index < len(columns.get(k) or []) and columns[k][index] in values for k, values in self.when.items())


@dataclass
class RewardResult:
    total: list[float | None]
    per_reward: dict[str, list[float | None]]
    failures: dict[str, int] = field(default_factory=dict)
    """Per reward: samples it failed on (raised, timed out, or reported with :func:`report_failure`)."""
    failure_reasons: dict[str, list[str]] = field(default_factory=dict)
    """Per reward: why, one line per failed sample."""


def build_rewards(spec: dict[str, Any]) -> list[RewardTerm]:
    """Turn a recipe's ``rewards`` mapping into weighted terms (see the module docstring)."""
    if not spec:
        raise ValueError("rewards: at least one reward is needed")
    terms = []
    for label, value in spec.items():
        options = dict(value) if isinstance(value, dict) else {"weight": value}
        weight = options.pop("weight", 1.0)
        if not _is_number(weight):
            raise ValueError(f"rewards.{label}.weight must be a number, got {weight!r}")
        requires = options.pop("requires", None)
        budget = options.pop("time_budget", None)
        if budget is not None and (not _is_number(budget) or budget <= 0):
            raise ValueError(f"rewards.{label}.time_budget must be a positive number of seconds, got {budget!r}")
        when = options.pop("when", None)
        if when is not None:
            if not isinstance(when, dict) or not when:
                raise ValueError(f"rewards.{label}.when must map a column to a value or list of values, got {when!r}")
            when = {str(k): list(v) if isinstance(v, list) else [v] for k, v in when.items()}
        name = options.pop("reward", label)
        try:
            fn = get_reward(name, **options)
        except ValueError as err:
            raise ValueError(f"rewards.{label}: {err}") from None
        terms.append(RewardTerm(label, fn, float(weight), requires, budget, when))
    labels = {t.label for t in terms}
    for term in terms:
        if term.requires is not None and term.requires not in labels:
            raise ValueError(f"rewards.{term.label}.requires: {term.requires!r} is not one of {sorted(labels)}")
    return terms


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _TimedOut(Exception):
    pass


def _call(term: RewardTerm, completions: list[str], columns: dict[str, list], budget: float | None) -> list:
    """``term.fn`` on the batch, in a helper thread when there is a time budget (a thread that runs past it
    is abandoned: Python cannot stop it, which is why built-in rewards bound their own time)."""
    if budget is None:
        return _checked(term.fn(completions, **columns), len(completions))
    outcome: dict[str, Any] = {}
    context = contextvars.copy_context()

    def target() -> None:
        try:
            outcome["values"] = context.run(term.fn, completions, **columns)
        except BaseException as err:  # handed to the caller's thread
            outcome["error"] = err

    worker = threading.Thread(target=target, name=f"reward-{term.label}", daemon=True)
    worker.start()
    worker.join(budget)
    if worker.is_alive():
        raise _TimedOut(f"exceeded its time budget of {budget:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return _checked(outcome["values"], len(completions))


def _checked(values, count: int) -> list:
    values = list(values)
    if len(values) != count:
        raise ValueError(f"returned {len(values)} values for {count} completions")
    return values


def _call_safely(term: RewardTerm, completions: list[str], columns: dict[str, list]) -> tuple[list, list[str]]:
    """Call a reward on the batch; if it raises or runs out of time, retry per sample so that one bad
    sample costs only itself. Returns the values and one reason per failed sample."""
    reported: list[str] = []
    token = _REPORTED.set(reported)
    try:
        budget = None if term.time_budget is None else term.time_budget * max(len(completions), 1)
        try:
            return _call(term, completions, columns, budget), reported
        except Exception as err:  # a reward bug must cost samples, never the run
            log.warning("reward %s failed on the batch (%s); scoring sample by sample", term.label, err)
        reported.clear()
        values = []
        for i, completion in enumerate(completions):
            try:
                values.append(_call(term, [completion], {k: [v[i]] for k, v in columns.items()}, term.time_budget)[0])
            except Exception as err:
                log.warning("reward %s failed on sample %d: %s", term.label, i, err)
                values.append(None)
                reported.append(f"sample {i}: {type(err).__name__}: {err}")
        return values, reported
    finally:
        _REPORTED.reset(token)


def score(terms: list[RewardTerm], completions: list[str], columns: dict[str, list]) -> RewardResult:
    """Weighted sum of the terms per sample; None where no term could score the sample."""
    per_reward: dict[str, list] = {}
    reasons: dict[str, list[str]] = {}
    for term in terms:
        chosen = [i for i in range(len(completions)) if term.applies(columns, i)]
        if len(chosen) == len(completions):
            per_reward[term.label], reasons[term.label] = _call_safely(term, completions, columns)
            continue
        values: list = [None] * len(completions)
        if chosen:
            subset, why = _call_safely(term, [completions[i] for i in chosen],
                                       {k: [v[i] for i in chosen] for k, v in columns.items()})
            for i, value in zip(chosen, subset):
                values[i] = value
            reasons[term.label] = why
        else:
            reasons[term.label] = []
        per_reward[term.label] = values
    failures = {label: len(why) for label, why in reasons.items()}
    total: list[float | None] = []
    for i in range(len(completions)):
        value, scored = 0.0, False
        for term in terms:
            r = per_reward[term.label][i]
            if r is None or (isinstance(r, float) and math.isnan(r)):
                continue
            if term.requires is not None:
                gate = per_reward[term.requires][i]
                if gate is None or gate <= 0:
                    r = 0.0
            value += term.weight * float(r)
            scored = True
        total.append(value if scored else None)
    return RewardResult(total, per_reward, failures, reasons)
