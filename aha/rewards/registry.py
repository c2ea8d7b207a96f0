"""Reward registry and weighting.

A reward is a callable ``f(completions: list[str], **columns) -> list[float | None]`` (the TRL
signature): ``columns`` are the dataset's columns for the same samples (``answer=[...]``), and ``None``
means "this sample cannot be scored" (it is excluded, never counted as 0 or 1).

Rewards are made by factories registered by name; ``get_reward(name, **options)`` builds one. A recipe
picks rewards by name with weights::

    rewards:
      accuracy: 1.0                                   # weight only
      format: {weight: 0.5, requires: accuracy}       # paid only where `accuracy` is positive
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from aha.algorithms.registry import Registry

log = logging.getLogger(__name__)

RewardFn = Callable[..., list]
REWARDS: Registry = Registry("reward")


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


@dataclass
class RewardResult:
    total: list[float | None]
    per_reward: dict[str, list[float | None]]
    failures: dict[str, int] = field(default_factory=dict)


def build_rewards(spec: dict[str, Any]) -> list[RewardTerm]:
    """Turn a recipe's ``rewards`` mapping into weighted terms (see the module docstring)."""
    if not spec:
        raise ValueError("rewards: at least one reward is needed")
    terms = []
    for label, value in spec.items():
        options = dict(value) if isinstance(value, dict) else {"weight": value}
        weight = float(options.pop("weight", 1.0))
        requires = options.pop("requires", None)
        name = options.pop("reward", label)
        terms.append(RewardTerm(label, get_reward(name, **options), weight, requires))
    labels = {t.label for t in terms}
    for term in terms:
        if term.requires is not None and term.requires not in labels:
            raise ValueError(f"rewards.{term.label}.requires: {term.requires!r} is not one of {sorted(labels)}")
    return terms


def _call_safely(term: RewardTerm, completions: list[str], columns: dict[str, list]) -> tuple[list, int]:
    """Call a reward on the batch; if it raises, retry per sample so one bad sample costs only itself."""
    try:
        values = list(term.fn(completions, **columns))
        if len(values) != len(completions):
            raise ValueError(f"returned {len(values)} values for {len(completions)} completions")
        return values, 0
    except Exception as err:  # a reward bug must cost samples, never the run
        log.warning("reward %s failed on the batch (%s); scoring sample by sample", term.label, err)
    values, failures = [], 0
    for i, completion in enumerate(completions):
        try:
            values.append(term.fn([completion], **{k: [v[i]] for k, v in columns.items()})[0])
        except Exception as err:
            log.warning("reward %s failed on sample %d: %s", term.label, i, err)
            values.append(None)
            failures += 1
    return values, failures


def score(terms: list[RewardTerm], completions: list[str], columns: dict[str, list]) -> RewardResult:
    """Weighted sum of the terms per sample; None where no term could score the sample."""
    per_reward: dict[str, list] = {}
    failures: dict[str, int] = {}
    for term in terms:
        per_reward[term.label], failures[term.label] = _call_safely(term, completions, columns)
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
    return RewardResult(total, per_reward, failures)
