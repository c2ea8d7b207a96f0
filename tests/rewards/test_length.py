"""Length shaping: DAPO's overlong penalty, Kimi's length penalty, cosine scaling, n-gram repetition."""

import pytest

from aha.rewards import get_reward
from aha.rewards.length import cosine_scaled, kimi_length_scores, overlong_penalty, repetition_penalty


@pytest.mark.parametrize("length, expected", [(0, 0.0), (80, 0.0), (81, -0.05), (90, -0.5), (100, -1.0), (500, -1.0)])
def test_overlong_penalty(length, expected):
    assert overlong_penalty(length, max_length=100, cache=20) == pytest.approx(expected)


def test_overlong_reward_counts_tokens_or_text():
    reward = get_reward("overlong", max_length=100, cache=20)
    assert reward(["a", "b"], completion_ids=[[1] * 50, [1] * 90]) == [0.0, pytest.approx(-0.5)]
    assert get_reward("overlong", max_length=10, cache=5, unit="chars")(["x" * 10]) == [-1.0]
    assert get_reward("overlong", max_length=4, cache=2, unit="words")(["one two three"]) == [-0.5]
    with pytest.raises(KeyError, match="completion_ids"):
        reward(["a"])
    with pytest.raises(ValueError, match="cache"):
        get_reward("overlong", max_length=10, cache=20)
    with pytest.raises(ValueError, match="unit"):
        get_reward("overlong", unit="bytes")


def test_kimi_length_scores_worked_example():
    groups = ["p"] * 3 + ["q"] * 3
    sizes = [10, 20, 30, 5, 5, 5]
    correct = [1.0, 0.0, 1.0, 1.0, 0.0, None]
    # group p: lam = [0.5, 0.0, -0.5]; the wrong one keeps min(0, 0.0); group q: equal lengths -> 0
    assert kimi_length_scores(sizes, correct, groups) == [0.5, 0.0, -0.5, 0.0, 0.0, None]
    assert kimi_length_scores([10, 30], [0.0, 0.0], ["p", "p"]) == [0.0, -0.5]


def test_length_reward_uses_correctness():
    reward = get_reward("length", unit="words")
    completions = ["<answer>4</answer>", "long words words words <answer>4</answer>", "<answer>5</answer>"]
    scores = reward(completions, answer=["4"] * 3, question=["q"] * 3)
    assert scores == [0.5, pytest.approx(-0.5), 0.0]
    with pytest.raises(KeyError, match="question"):
        reward(completions, answer=["4"] * 3)


@pytest.mark.parametrize("length, correct, expected", [
    (0, True, 1.0), (50, True, 0.75), (100, True, 0.5), (400, True, 0.5),
    (0, False, -1.0), (50, False, -0.75), (100, False, -0.5),
])
def test_cosine_scaled(length, correct, expected):
    assert cosine_scaled(length, correct, 100, (0.5, 1.0), (-1.0, -0.5)) == pytest.approx(expected)


def test_cosine_reward():
    reward = get_reward("cosine", max_length=100)
    scores = reward(["<answer>4</answer>", "<answer>5</answer>", "<answer>4</answer>"],
                    answer=["4", "4", None], completion_ids=[[1] * 50, [1] * 50, [1]])
    assert scores == [pytest.approx(0.75), pytest.approx(-0.75), None]
    with pytest.raises(ValueError, match="min_value"):
        get_reward("cosine", min_value_correct=2.0)


@pytest.mark.parametrize("text, n, expected", [
    ("a b a b a b", 2, 0.6), ("a b c d", 2, 0.0), ("a", 2, 0.0), ("", 3, 0.0), ("A a A a", 1, 0.75),
])
def test_repetition_penalty(text, n, expected):
    assert repetition_penalty(text, n, -1.0) == pytest.approx(-expected)


def test_repetition_reward():
    assert get_reward("repetition", ngram_size=2, max_penalty=-0.5)(["a b a b a b"]) == [pytest.approx(-0.3)]
    assert get_reward("repetition", ngram_size=2, unit="chars")(["哈哈哈哈"]) == [pytest.approx(-2 / 3)]
    with pytest.raises(ValueError, match="max_penalty"):
        get_reward("repetition", max_penalty=1.0)
    with pytest.raises(ValueError, match="ngram_size"):
        get_reward("repetition", ngram_size=0)
