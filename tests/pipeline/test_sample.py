"""`aha sample`: each rejection filter keeps what it must keep and drops what it must drop; the whole
selection counts what each stage removed and writes rows ready for `aha sft`."""

import json

import pytest

from aha.cli import main
from aha.config import load_config
from aha.config.generate import SampleConfig
from aha.pipeline.filters import (code_problem, language_problem, paragraph_problem, repetition_problem,
                                  structure_problem)
from aha.pipeline.sample import STAGES, read_traces, rejection_sample, select
from aha.utils.console import make_console

GOOD = "<think>3 plus 4 is 7, and 7 minus 2 is 5.</think> <answer>5</answer>"


@pytest.mark.parametrize("text, required, keep", [
    (GOOD, "think", True),
    ("<think>so it is 5</think> The answer is \\boxed{5}.", "think", True),
    ("<think>so it is 5</think>", "think", False),              # no answer after the reasoning
    ("The answer is 5.", "think", False),                         # no reasoning block
    ("<think>a <answer>5</answer>", "think", False),              # never closed
    ("|special_token|3 + 4 = 7|special_token|5", "r1", True),
    ("3 + 4 = 7 so 5", "r1", False),
    ("anything", "none", True),
])
def test_structure(text, required, keep):
    assert (structure_problem(text, required) is None) == keep


@pytest.mark.parametrize("text, keep", [
    (GOOD, True),
    # LaTeX commands are not English words, nor any language
    ("<think>Let me compute \\frac{1}{2} + x = 3, so x is 2.5</think> <answer>2.5</answer>", True),
    ("<think>3 加 4 等于 7, 然后减 2 得 5</think> <answer>5</answer>", False),
    ("<think>three plus four 等于 seven minus two</think> <answer>5</answer>", False),
    ("<think> 3 + 4 - 2 = 5</think> <answer>5</answer>", True),  # no words at all: nothing is mixed
])
def test_language_mixing(text, keep):
    assert (language_problem(text, "en", 0.95) is None) == keep
    assert language_problem(text, None, 0.95) is None


def test_repetition_paragraphs_and_code():
    assert repetition_problem(GOOD, 0.5) is None
    looping = "<think>" + "wait let me check again " * 20 + "</think> <answer>5</answer>"
    assert repetition_problem(looping, 0.5).endswith("of its 4-grams repeat")
    assert repetition_problem(looping, 1.0) is None
    assert paragraph_problem("short.\n\nalso short.", 100) is None
    assert paragraph_problem("x" * 150 + "\n\nshort", 100) == "a paragraph of 150 characters"
    assert paragraph_problem("x" * 150, 0) is None
    assert code_problem("<think>```python\nprint(5)\n```</think> 5", allow_code=False) == "a code block"
    assert code_problem("<think>```python\nprint(5)\n```</think> 5", allow_code=True) is None
    assert code_problem(GOOD, allow_code=False) is None


def trace(i: int, s: int, completion: str, answer: str = "5") -> dict:
    return {"question": f"q{i}", "answer": answer, "prompt_index": i, "sample": s, "completion": completion}


TRACES = [
    trace(0, 0, GOOD),
    trace(0, 1, GOOD.replace("<answer>5", "<answer>6")),                     # wrong answer
    trace(0, 2, "  " + GOOD.upper().replace("<THINK>", "<think>").replace("</THINK>", "</think>")
          .replace("<ANSWER>", "<answer>").replace("</ANSWER>", "</answer>")),  # the same text, case aside
    trace(0, 3, "<think>so 5</think> <answer>5</answer>"),
    trace(0, 4, "<think>5, definitely</think> <answer>5</answer>"),          # over the cap of 2
    trace(1, 0, "The answer is 5."),                                         # no structure
    trace(1, 1, "<think>3 加 4 等于 7 减 2 得 5</think> <answer>5</answer>"),   # mixed language
    trace(1, 2, "<think>" + "check it again " * 30 + "</think> <answer>5</answer>"),  # repetitive
    trace(2, 0, "<think>" + "y" * 200 + "</think> <answer>5</answer>"),     # a wall of text
    trace(2, 1, "<think>```python\nprint(5)\n```</think> <answer>5</answer>"),  # code in a maths trace
    trace(2, 2, "<think>4 and 1</think> <answer>5</answer>"),
]


def sample_config(tmp_path, *extra) -> SampleConfig:
    return load_config(SampleConfig, overrides=[f"output={tmp_path / 'kept.jsonl'}", f"traces={tmp_path / 't.jsonl'}",
                                                "max_per_prompt=2", "max_paragraph_chars=150", *extra])


def test_each_stage_removes_what_it_must_and_the_rest_is_kept(tmp_path):
    config = sample_config(tmp_path)
    kept, removed, examples = select(config, TRACES, [t["completion"].rstrip().endswith("<answer>5</answer>")
                                                      or "5" in t["completion"][-3:] for t in TRACES])
    assert removed == {"unverified": 1, "no_structure": 1, "mixed_language": 1, "repetitive": 1, "long_paragraph": 1,
                       "unexpected_code": 1, "duplicate": 1, "over_per_prompt_cap": 1}
    assert [(k["prompt_index"], k["sample"]) for k in kept] == [(0, 0), (0, 3), (2, 2)]
    assert set(examples) == set(STAGES)


def test_rejection_sampling_of_a_traces_file_grades_with_the_training_grader(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in TRACES))
    report = rejection_sample(sample_config(tmp_path), make_console())
    assert report["removed"]["unverified"] == 1 and report["kept"] == 3 and report["prompts_kept"] == 2
    rows = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert rows[0]["prompt"] == "q0" and rows[0]["completion"] == GOOD  # ready for aha sft
    saved = json.loads((tmp_path / "kept.report.json").read_text())
    assert saved["removed"] == report["removed"]
    # the same through the command line, printing the table
    assert main(["sample", "--traces", str(path), "--output", str(tmp_path / "k2.jsonl"), "--max-per-prompt", "2",
                 "--max-paragraph-chars", "150"]) == 0
    assert "over_per_prompt_cap" in capsys.readouterr().err


def test_traces_without_answers_cannot_be_verified(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"question": "q", "completion": GOOD}) + "\n")
    code = main(["sample", "--traces", str(path), "--output", str(tmp_path / "k.jsonl")])
    assert code == 2 and "no `answer` field to verify against" in capsys.readouterr().err
    assert main(["sample", "--traces", str(path), "--output", str(tmp_path / "k.jsonl"), "--verify-with", "none"]) == 0
    assert len(read_traces(tmp_path / "k.jsonl")) == 1


def test_sampling_from_a_model_generates_the_traces_first(tmp_path):
    config = load_config(SampleConfig, overrides=[
        "prompts=chain_sum", "num_prompts=3", "model=tiny:qwen2", "k=2", "max_completion_length=6",
        f"output={tmp_path / 'kept.jsonl'}", "verify_with=none", "require_format=none", "language=null"])
    report = rejection_sample(config, make_console())
    assert report["traces"] == 6 and (tmp_path / "kept.traces.jsonl").exists()
