"""Per-step rollout analytics on hand-made responses, and the aha-moment detector on synthetic series: a step
or a ramp under noise is found within 2 steps; flat noise and a slow drift are not moments."""

from __future__ import annotations

import random

import pytest

from aha.analysis.reflection import ReflectionCounter, find_aha_moment, mixes_languages, rollout_stats

RESPONSES = [
    "<think>3 + 4 = 7. Wait, the sign is minus: 3 - 4 = -1. Let me check: -1 + 4 = 3.</think><answer>-1</answer>",
    "<think>5 + 5 = 10</think><answer>10</answer>",
    "<think>2 * 3 = 6. Hmm, that is a mistake, it asks 2 + 3 = 5.</think><answer>5</answer>",
    "<think>7 - 2 = 5, 等等, let me 检查 again</think><answer>4</answer>",
]
LENGTHS = [40, 10, 30, 20]
CORRECT = [True, True, False, False]


def test_reflection_phrases_are_whole_words_and_classified():
    counter = ReflectionCounter()
    assert counter.count(RESPONSES[0]) == (2, 1, 1)       # "Wait" (backtracking), "Let me check" (verification)
    assert counter.count(RESPONSES[1]) == (0, 0, 0)
    assert counter.count(RESPONSES[2]) == (2, 0, 2)       # "Hmm", "mistake"
    assert counter.count(RESPONSES[3]) == (2, 1, 1)       # 等等 (backtracking), 检查 (verification)
    assert counter.count("the waiter checked in; awaiting") == (0, 0, 0)  # not words of their own
    assert counter.count("Let  me\ncheck") == (1, 1, 0)   # any whitespace inside a phrase
    text = "So. Wait, no."
    assert [text[a:b] for a, b in counter.spans(text)] == ["Wait"]
    mine = ReflectionCounter(["eureka"])
    assert mine.count("Eureka! wait") == (1, 0, 0)


def test_rollout_stats_by_hand():
    stats = rollout_stats(RESPONSES, LENGTHS, CORRECT, truncated=[False, False, True, False])
    assert stats["length/mean"] == 25.0
    assert stats["length/p50"] == 25.0
    assert stats["length/p90"] == pytest.approx(30 + 0.7 * 10)  # 90th percentile between 30 and 40
    assert stats["length/max"] == 40.0
    assert stats["length/correct"] == 25.0 and stats["length/incorrect"] == 25.0
    assert stats["truncated_rate"] == 0.25
    assert stats["reflection/rate"] == 0.75
    assert stats["reflection/per_1k_tokens"] == pytest.approx(1000 * 6 / 100)
    assert stats["reflection/verification"] == pytest.approx(2 / 4)
    assert stats["reflection/backtracking"] == pytest.approx(4 / 4)
    assert stats["reflection/accuracy_reflective"] == pytest.approx(1 / 3)  # 0 right, 2 and 3 wrong
    assert stats["reflection/accuracy_plain"] == 1.0
    assert stats["language_mixing"] == 0.25
    unknown = rollout_stats(RESPONSES[:2], LENGTHS[:2])
    assert unknown["reflection/accuracy_reflective"] is None and unknown["length/correct"] is None
    assert rollout_stats([], []) == {}


def test_language_mixing():
    assert mixes_languages("<think>three plus 四 is seven</think>")
    assert not mixes_languages("<think>3 + 4 = 7</think> <answer>7</answer>")
    assert not mixes_languages("<think>これは 問題 です</think>")  # Japanese: kana and kanji together
    assert not mixes_languages("<think>all English</think> 答案")  # only the reasoning counts


def noisy(values, sigma, seed):
    rng = random.Random(seed)
    return [v + rng.gauss(0, sigma) for v in values]


@pytest.mark.parametrize("seed", range(5))
def test_a_noisy_step_is_found_within_two_steps(seed):
    series = noisy([0.05] * 40 + [0.4] * 30, 0.05, seed)
    moment = find_aha_moment(series)
    assert moment is not None and abs(moment.index - 40) <= 2
    assert moment.before == pytest.approx(0.05, abs=0.03) and moment.after == pytest.approx(0.4, abs=0.03)
    assert 0.5 <= moment.confidence <= 1


@pytest.mark.parametrize("seed", range(5))
def test_a_noisy_ramp_is_found_within_two_steps_of_its_middle(seed):
    ramp = [0.05 + 0.35 * i / 6 for i in range(7)]   # steps 30..36
    series = noisy([0.05] * 30 + ramp + [0.4] * 30, 0.04, seed)
    moment = find_aha_moment(series)
    assert moment is not None and abs(moment.index - 33) <= 2


@pytest.mark.parametrize("seed", range(5))
def test_flat_noise_and_a_slow_drift_are_not_moments(seed):
    assert find_aha_moment(noisy([0.1] * 60, 0.05, seed)) is None
    drift = [0.05 + 0.4 * i / 59 for i in range(60)]
    assert find_aha_moment(noisy(drift, 0.03, seed)) is None
    assert find_aha_moment([0.2] * 30) is None
    down = noisy([0.4] * 30 + [0.05] * 30, 0.03, seed)     # a fall is not an aha moment
    assert find_aha_moment(down) is None


def test_missing_values_are_skipped_and_the_index_is_the_series_own():
    series = [0.0, None, 0.01, 0.0, None, 0.02, 0.5, 0.52, None, 0.49, 0.51]
    moment = find_aha_moment(series)
    assert moment is not None and moment.index == 6
    assert find_aha_moment([0.1, 0.9]) is None  # too short to tell
