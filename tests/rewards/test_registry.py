"""Reward registry and weighting: names, options, weights, gating, and the failure modes (an exception or
a time-out costs the samples concerned, with a logged reason counted in the result, never the run)."""

import logging
import time

import pytest

from aha.rewards import REWARDS, build_rewards, get_reward, register_reward, report_failure, score
from aha.rewards.registry import RewardTerm


def test_every_documented_reward_is_registered():
    for name in ("accuracy", "format", "tag_count", "language", "overlong", "length", "cosine", "repetition", "code"):
        assert name in REWARDS
    with pytest.raises(ValueError, match="valid: accuracy"):
        get_reward("nonsense")


def _term(label, fn, weight=1.0, requires=None, time_budget=None):
    return RewardTerm(label, fn, weight, requires, time_budget)


def test_weights_gating_and_none():
    one = _term("one", lambda c, **k: [1.0, 0.0, None], 2.0)
    half = _term("half", lambda c, **k: [0.5, 0.5, 0.5], 1.0, requires="one")
    result = score([one, half], ["a", "b", "c"], {})
    assert result.total == [2.5, 0.0, 0.0]  # `half` is paid only where `one` is positive
    assert result.per_reward == {"one": [1.0, 0.0, None], "half": [0.5, 0.5, 0.5]}
    assert result.failures == {"one": 0, "half": 0}


def test_gate_on_unscored_sample_pays_nothing():
    gate = _term("gate", lambda c, **k: [None])
    paid = _term("paid", lambda c, **k: [1.0], requires="gate")
    assert score([gate, paid], ["a"], {}).total == [0.0]
    assert score([gate], ["a"], {}).total == [None]


def test_exception_costs_only_the_bad_sample(caplog):
    def fragile(completions, **columns):
        if "boom" in completions:
            raise RuntimeError("cannot parse")
        return [1.0] * len(completions)

    with caplog.at_level(logging.WARNING):
        result = score([_term("fragile", fragile)], ["ok", "boom", "ok"], {"answer": [1, 2, 3]})
    assert result.per_reward["fragile"] == [1.0, None, 1.0]
    assert result.total == [1.0, None, 1.0]
    assert result.failures == {"fragile": 1}
    assert "RuntimeError: cannot parse" in result.failure_reasons["fragile"][0]
    assert "cannot parse" in caplog.text


def test_time_budget_costs_only_the_slow_sample():
    def slow(completions, **columns):
        if "slow" in completions:
            time.sleep(3)
        return [1.0] * len(completions)

    start = time.perf_counter()
    result = score([_term("slow", slow, time_budget=0.3)], ["ok", "slow"], {})
    assert time.perf_counter() - start < 2.5
    assert result.per_reward["slow"] == [1.0, None]
    assert result.failures == {"slow": 1} and "time budget" in result.failure_reasons["slow"][0]


def test_wrong_length_is_a_failure():
    result = score([_term("short", lambda c, **k: [1.0])], ["a", "b"], {})
    assert result.per_reward["short"] == [1.0, 1.0]  # per-sample retry gives one value each


def test_reported_failures_are_counted():
    def picky(completions, **columns):
        out = []
        for i, c in enumerate(completions):
            if c == "odd":
                report_failure(i, "verifier timed out")
                out.append(None)
            else:
                out.append(1.0)
        return out

    result = score([_term("picky", picky)], ["fine", "odd"], {})
    assert result.failures == {"picky": 1} and result.failure_reasons["picky"] == ["sample 1: verifier timed out"]
    assert picky(["odd"]) == [None]  # outside `score` it only logs


def test_build_rewards_from_a_recipe():
    terms = build_rewards({"accuracy": 1.0, "format": {"weight": 0.5, "requires": "accuracy", "strict": False},
                           "tidy": {"reward": "repetition", "ngram_size": 2, "time_budget": 10}})
    assert [(t.label, t.weight, t.requires, t.time_budget) for t in terms] == [
        ("accuracy", 1.0, None, None), ("format", 0.5, "accuracy", None), ("tidy", 1.0, None, 10)]
    with pytest.raises(ValueError, match="requires"):
        build_rewards({"format": {"requires": "accuracy"}})
    with pytest.raises(ValueError, match="time_budget"):
        build_rewards({"format": {"time_budget": -1}})
    with pytest.raises(ValueError, match="bad options"):
        build_rewards({"format": {"stric": True}})
    with pytest.raises(ValueError, match="at least one"):
        build_rewards({})


def test_registering_twice_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_reward("format")(lambda: None)
