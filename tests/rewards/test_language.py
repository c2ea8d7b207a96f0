"""The language-consistency reward: share of chain-of-thought words in the target script."""

import pytest

from aha.rewards import get_reward
from aha.rewards.language import chain_of_thought, language_share, words


@pytest.mark.parametrize("text, language, share", [
    ("<think>Let me add the numbers.</think><answer>3</answer>", "en", 1.0),
    ("<think>我们先计算</think><answer>3</answer>", "zh", 1.0),
    ("<think>我们先计算</think><answer>3</answer>", "en", 0.0),
    ("<think>First 我们</think>", "en", 1 / 3),  # "First" + two ideographs
    ("<think>First 我们</think>", "zh", 2 / 3),
    ("<think>x = \\frac{1}{2} + 3</think>", "en", 1.0),  # LaTeX commands and digits are not words
    ("<think>ひらがなと漢字</think>", "ja", 1.0),
    ("<think>한국어 English</think>", "ko", 3 / 4),
    ("<think>Привет мир</think>", "ru", 1.0),
    ("<think>1 + 2 = 3</think>", "en", 0.0),  # no words at all
    ("<think>unclosed thoughts 思考", "en", 2 / 4),
    ("no tags, plain English", "en", 1.0),
])
def test_language_reward(text, language, share):
    assert get_reward("language", target=language)([text]) == [pytest.approx(share)]


def test_scope_all_counts_the_answer_too():
    text = "<think>think in English</think><answer>答案是三</answer>"
    assert get_reward("language", target="en", scope="think")([text]) == [1.0]
    assert get_reward("language", target="en", scope="all")([text]) == [pytest.approx(3 / 7)]


def test_helpers():
    assert words("café 中 \\sqrt x2") == ["café", "中", "x"]
    assert chain_of_thought("<think> a </think> b") == " a "
    assert language_share("", "en") == 0.0


def test_options_are_validated():
    with pytest.raises(ValueError, match="unknown target"):
        get_reward("language", target="klingon")
    with pytest.raises(ValueError, match="scope"):
        get_reward("language", scope="answer")
