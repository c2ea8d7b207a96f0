"""`aha train` checks every input before any model loads: each failure is one line naming the file and line
or the field, and exit code 2."""

import json

import pytest

import aha.models
from aha.cli import main


@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(aha.models, "load_model", refuse)


def run(capsys, *args: str) -> tuple[int, str]:
    code = main(["train", *args])
    err = capsys.readouterr().err.strip()
    return code, err


def data_file(tmp_path, text: str, name: str = "train.jsonl"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("args, message", [
    (["rewards={acuracy: 1.0}"], "aha: error: rewards.acuracy: unknown reward 'acuracy'; valid: accuracy, "),
    (["rewards={accuracy: {weight: heavy}}"], "aha: error: rewards.accuracy.weight must be a number, got 'heavy'"),
    (["rewards={accuracy: {fallback_last_number: maybe}}"],
     "aha: error: rewards.accuracy: accuracy: fallback_last_number must be true or false, got 'maybe'"),
    (["rewards={format: {weight: 1.0, requires: correctness}}"],
     "aha: error: rewards.format.requires: 'correctness' is not one of ['format']"),
    (["rewards={code: {workers: 0}}"], "aha: error: rewards.code: code: workers must be a positive integer, got 0"),
    (["model=./models/not-there"], "aha: error: model: ./models/not-there: no such folder"),
    (["model=tiny:gpt9"], "aha: error: model: unknown tiny architecture 'gpt9'"),
    (["model=weights.gguf"], "aha: error: model: weights.gguf: GGUF file not found"),
    (["task=sudoku"], "aha: error: task: unknown task 'sudoku'; built in: chain_sum"),
    (["task_options={max_terms: 1, min_terms: 3}"], "aha: error: task: task 'chain_sum' with options"),
    (["task=missing.jsonl"], "aha: error: missing.jsonl: file not found"),
])
def test_bad_inputs_are_one_line_and_exit_2_before_a_model_loads(tmp_path, capsys, no_model_loading, monkeypatch,
                                                                   args, message):
    monkeypatch.chdir(tmp_path)
    code, err = run(capsys, f"output_dir={tmp_path / 'run'}", *args)
    assert code == 2 and err.startswith(message) and "\n" not in err, err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_a_bad_row_in_the_task_names_file_line_and_field(tmp_path, capsys, no_model_loading):
    rows = [{"problem": "1+1", "solution": "2"}, {"problem": "2+2"}]
    path = data_file(tmp_path, "".join(json.dumps(r) + "\n" for r in rows))
    code, err = run(capsys, f"task={path}", "field_map={question: problem, answer: solution}", "eval_size=0",
                    f"output_dir={tmp_path / 'run'}")
    assert code == 2
    assert err == f"aha: error: {path}:2: missing field 'solution' (mapped to 'answer'); fields present: problem"


def test_a_bad_value_in_a_recipe_names_the_recipe_line(tmp_path, capsys, no_model_loading):
    recipe = data_file(tmp_path, "max_steps: 4\nrewards: {accuracy: 1.0, formt: 0.5}\n", "r.yaml")
    code, err = run(capsys, str(recipe), f"output_dir={tmp_path / 'run'}")
    assert code == 2 and err.startswith(f"aha: error: {recipe}:2: rewards.formt: unknown reward 'formt'")
    recipe.write_text("max_steps: 4\n\ngroup_size: 0\n")
    code, err = run(capsys, str(recipe), f"output_dir={tmp_path / 'run'}")
    assert code == 2 and err == f"aha: error: {recipe}:3: group_size: must be >= 1, got 0"


def test_an_existing_run_is_refused_before_a_model_loads(tmp_path, capsys, no_model_loading):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    code, err = run(capsys, "model=tiny:llama", f"output_dir={tmp_path / 'run'}")
    assert code == 2 and "already holds a run; continue it with resume=true" in err


def test_a_hub_id_that_cannot_be_loaded_is_one_line(tmp_path, capsys, monkeypatch):
    import aha.models

    monkeypatch.setattr(aha.models, "hub_reachable", lambda: False)  # the hub is not asked
    code, err = run(capsys, "model=no-such-org/no-such-model", f"output_dir={tmp_path / 'run'}", "eval_size=0")
    assert code == 2 and err.startswith("aha: error: cannot load 'no-such-org/no-such-model': the Hugging Face hub")
    assert "\n" not in err
