"""Answer extraction, gold normalisation and math-verify equivalence: a table of equal and unequal forms
(including every gold shape of ../shared/data), the data files' real gold answers, and the time-outs."""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor

import pytest

from aha.rewards import get_reward
from aha.rewards.math import extract_answer, normalise_gold
from aha.rewards.verifier import plain_number
from tests.data.conftest import SHARED_DATA as DATA

# (completion's answer, gold as the dataset stores it, equal?)
PAIRS = [
    # plain numbers and their spellings
    ("42", "42", True), ("42.0", "42", True), ("42", 42.0, True), ("-7", "-7", True), ("7", "-7", False),
    ("1,000", "1000", True), ("1000", "1,000", True), ("0.5", "0.50", True), (".5", "0.5", True),
    ("41", "42", False), ("4.2", "42", False), ("100", "1000", False),
    # GSM8K: the worked solution ending in "#### <answer>"
    ("18", "She sells 16 - 3 - 4 = 9 duck eggs.\n#### 18", True),
    ("70000", "<<200000-130000=70000>>70,000\n#### 70000", True),
    ("1,200", "The total is 1200.\n#### 1,200", True),
    ("19", "#### 18", False),
    # AIME: zero-padded strings
    ("25", "025", True), ("025", "025", True), ("204", "204", True), ("24", "204", False), ("5", "005", True),
    # AMC / SVAMP / MAWPS: numbers stored as JSON floats
    ("27", 27.0, True), ("27.0", 27.0, True), ("28", 27.0, False), ("145", 145.0, True), ("0.25", 0.25, True),
    ("\\frac14", 0.25, True), ("43", 43.0, True),
    # ASDiv: a number followed by its unit
    ("9", "9 (apples)", True), ("15", "15 (balls)", True), ("16", "9 (apples)", False), ("1/3", "1/3 (cups)", True),
    # fractions, decimals, percentages
    ("\\frac12", "0.5", True), ("\\frac{1}{2}", "\\frac12", True), ("1/2", "\\frac{1}{2}", True),
    ("\\dfrac{14}{3}", "\\frac{14}{3}", True), ("\\frac{14}{3}", "\\frac{13}{3}", False),
    ("50\\%", "0.5", True), ("0.5", "50\\%", True), ("\\frac{3}{4}", "0.75", True), ("0.7", "0.75", False),
    # radicals, pi, expressions
    ("2\\sqrt{2}", "\\sqrt{8}", True), ("\\sqrt{2}", "\\sqrt{3}", False), ("2\\pi", "\\pi \\cdot 2", True),
    ("p - q", "p - q", True), ("-q + p", "p - q", True), ("q - p", "p - q", False),
    ("x^2+2x+1", "(x+1)^2", True), ("x^2+1", "(x+1)^2", False),
    # equations
    ("x=3", "3", True), ("x = 3", "x=3", True), ("y=4", "3", False),
    # sets, tuples, intervals
    ("\\{1,2\\}", "\\{2,1\\}", True), ("\\{1,2,3\\}", "\\{1,2\\}", False),
    ("(-\\infty, 3]", "(-\\infty,3]", True), ("(-\\infty, 3)", "(-\\infty, 3]", False),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    # MATH / Minerva: the answer inside a worked solution's last \boxed{}
    ("3", "So the answer is $\\boxed{3}$.", True), ("\\frac{1}{3}", "Hence $\\boxed{\\frac{1}{3}}$", True),
    ("4", "So the answer is $\\boxed{3}$.", False),
    # hacks: many candidates instead of one answer
    ("1, 2, 3, 4, 5", "3", False), ("3 \\text{ or } 4", "3", False), ("\\boxed{3} \\boxed{4}", "3", False),
    ("2, 3", "3", False), ("3, 3, 3", "4", False),
    # hacks: the question's arithmetic copied into the answer, which math-verify would evaluate to the gold
    ("8 + 2 - 7", "3", False), ("1 - 7 - 8", "-14", False), ("2 \\times 3", 6.0, False), ("2^{10}", "1024", False),
    ("8 + 2 - 7 = 3", "3", True), ("-14", "-14", True), ("3/4", "0.75", True),
    # letters and text answers
    ("\\text{(C)}", "\\text{(C)}", True), ("\\text{(B)}", "\\text{(C)}", False),
    # more unequal forms: near misses a lenient grader might accept
    ("3.0001", "3", False), ("\\frac{1}{3}", "0.33", False), ("-\\frac12", "\\frac12", False),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{3}}{2}", False), ("10\\%", "0.01", False),
]


@pytest.fixture(scope="module")
def scored():
    """Every table row scored in one batch by the ``accuracy`` reward."""
    reward = get_reward("accuracy")
    completions = [f"<think>working</think><answer>{pred}</answer>" for pred, _, _ in PAIRS]
    return reward(completions, answer=[gold for _, gold, _ in PAIRS])


def test_the_table_is_large_enough():
    assert len(PAIRS) >= 60
    assert sum(eq for _, _, eq in PAIRS) >= 25 and sum(not eq for _, _, eq in PAIRS) >= 25


@pytest.mark.parametrize("row", range(len(PAIRS)), ids=[f"{p!r}~{g!r}"[:40] for p, g, _ in PAIRS])
def test_math_pairs(scored, row):
    pred, gold, equal = PAIRS[row]
    assert scored[row] == (1.0 if equal else 0.0), (pred, gold, normalise_gold(gold))


@pytest.mark.parametrize("gold, expected", [
    (27.0, "27"), (145.0, "145"), (0.25, "0.25"), ("025", "25"), ("000", "0"), ("204", "204"),
    ("ducks.\n#### 18", "18"), ("#### 1,000", "1000"), ("9 (apples)", "9"), ("1/3 (cups)", "1/3"),
    ("So $\\boxed{\\frac{1}{3}}$.", "\\frac{1}{3}"), ("f(x)", "f(x)"), ("\\text{(C)}", "\\text{(C)}"), (7, "7"),
])
def test_normalise_gold(gold, expected):
    assert normalise_gold(gold) == expected


@pytest.mark.parametrize("text, fallback, expected", [
    ("<think>a</think><answer> 4 </answer>", False, "4"),
    ("<answer>1</answer> then <answer>2</answer>", False, "2"),
    ("so \\boxed{\\frac{1}{2}} and \\boxed{3}", False, "3"),
    ("\\boxed{\\frac{a}{b}}", False, "\\frac{a}{b}"),
    ("the answer is 1,234 apples", True, "1234"),
    ("the answer is 1,234 apples", False, None),
    ("no numbers", True, None),
    ("unclosed \\boxed{3", False, None),
])
def test_extract_answer(text, fallback, expected):
    assert extract_answer(text, fallback_last_number=fallback) == expected


def test_accuracy_edge_cases():
    reward = get_reward("accuracy", fallback_last_number=True)
    completions = ["<answer></answer>", "<answer>" + "1" * 500 + "</answer>", "no answer at all", "it is 42",
                   "<answer>42</answer>"]
    assert reward(completions, answer=["42", "42", "42", "42", None]) == [0.0, 0.0, 0.0, 1.0, None]
    assert get_reward("accuracy")(["it is 42"], answer=["42"]) == [1.0]  # the last number, by default
    assert get_reward("accuracy", fallback_last_number=False)(["it is 42"], answer=["42"]) == [0.0]  # no tag, no box
    with pytest.raises(KeyError, match="solution"):
        get_reward("accuracy", answer_field="solution")(["1"], answer=["1"])
    with pytest.raises(ValueError, match="fallback_last_number"):
        get_reward("accuracy", fallback_last_number="yes")


@pytest.mark.parametrize("name, key", [("math500", "answer"), ("aime24", "answer"), ("amc23", "answer"),
                                       ("gsm8k", "answer"), ("svamp", "Answer"), ("asdiv", "answer"),
                                       ("mawps", "target"), ("minerva_math", "solution")])
def test_real_gold_answers_match_themselves(name, key):
    path = DATA / f"{name}.jsonl"
    if not path.exists():
        pytest.skip(f"{path} is not there")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    golds = [normalise_gold(row[key]) for row in rows[:: max(1, len(rows) // 8)]]
    assert all(golds) and not any("####" in g or "(" in g and g.endswith(")") and " (" in g for g in golds)
    reward = get_reward("accuracy")
    right = reward([f"<answer>{g}</answer>" for g in golds], answer=golds)
    assert right == [1.0] * len(golds), [g for g, r in zip(golds, right) if r != 1.0]
    numeric = [g for g in golds if plain_number(g) is not None]
    wrong = reward([f"<answer>{plain_number(g) + 1}</answer>" for g in numeric], answer=numeric)
    assert wrong == [0.0] * len(numeric)


def _score_in_worker(pairs):
    reward = get_reward("accuracy")
    return reward([f"<answer>{p}</answer>" for p, _ in pairs], answer=[g for _, g in pairs])


def test_accuracy_works_in_worker_processes():
    with ProcessPoolExecutor(1) as pool:
        assert pool.submit(_score_in_worker, [("\\frac12", "0.5"), ("2", "3")]).result(120) == [1.0, 0.0]


def test_a_verifier_failure_costs_one_sample_with_a_reason():
    from aha.rewards import build_rewards, score
    from aha.rewards.verifier import shared_verifier
    from tests.rewards.test_verifier import hung_worker

    terms = build_rewards({"accuracy": {"timeout": 0.5}})  # the verifier's deadline per answer
    worker = shared_verifier(0.5, 1)._workers[0]
    worker.stop()
    worker.proc = hung_worker()  # takes requests, never answers
    result = score(terms, ["<answer>\\frac{2}{4}</answer>", "<answer>3</answer>"], {"answer": ["0.5", "3"]})
    assert result.per_reward["accuracy"] == [None, 1.0]
    assert result.failures == {"accuracy": 1} and "timed out" in result.failure_reasons["accuracy"][0]
    assert score(terms, ["<answer>\\frac{2}{4}</answer>"], {"answer": ["0.5"]}).total == [1.0]  # replaced
    worker.stop()
