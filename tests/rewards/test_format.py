"""The R1-Zero format rewards, strict and lenient, and tag_count's partial credit."""

import pytest

from aha.rewards import get_reward
from aha.rewards.format import follows_format

CASES = [  # completion, strict, lenient
    ("<think>a</think><answer>1</answer>", True, True),
    ("  <think>\nsteps\n</think>\n<answer>1</answer>\n", True, True),
    ("<think></think><answer>1</answer>", True, True),
    ("<think>a</think><answer></answer>", False, False),
    ("preamble <think>a</think><answer>1</answer>", False, True),
    ("<think>a</think><answer>1</answer> trailing", False, True),
    ("<think>a</think><think>b</think><answer>1</answer>", False, True),
    ("<answer>1</answer><think>a</think>", False, False),
    ("<think>a<answer>1</answer>", False, False),
    ("<think>a</think>", False, False),
    ("", False, False),
]


@pytest.mark.parametrize("text, strict, lenient", CASES)
def test_follows_format(text, strict, lenient):
    assert follows_format(text, strict=True) is strict
    assert follows_format(text, strict=False) is lenient
    assert get_reward("format")([text]) == [float(strict)]
    assert get_reward("format", strict=False)([text]) == [float(lenient)]


@pytest.mark.parametrize("text, credit", [
    ("<think>a</think><answer>1</answer>", 1.0), ("<think>a</think>", 0.5), ("<answer>1</answer>", 0.5),
    ("<think><think></think><answer>1</answer>", 0.75), ("nothing", 0.0),
])
def test_tag_count(text, credit):
    assert get_reward("tag_count")([text]) == [credit]


def test_unknown_option_is_a_clear_error():
    with pytest.raises(ValueError, match="format"):
        get_reward("format", strictness=1)
