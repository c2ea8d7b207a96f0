import pytest

from aha.data.records import DataError
from aha.data.tasks import make_task


def test_chain_sum_held_out_set_is_fixed_and_never_trained_on():
    task = make_task("chain_sum", eval_size=60, seed=0)
    other_seed = make_task("chain_sum", eval_size=60, seed=7)
    heldout = {ex["question"] for ex in task.eval_examples()}
    assert len(heldout) == 60
    assert heldout == {ex["question"] for ex in other_seed.eval_examples()}  # does not move with the seed
    train = [task.example(i) for i in range(400)]
    assert not heldout & {ex["question"] for ex in train}
    assert all(ex["question"].endswith("=") and ex["answer"].lstrip("-").isdigit() for ex in train)


def test_chain_sum_examples_are_deterministic_by_index_and_difficulty_is_settable():
    a = make_task("chain_sum", {"min_terms": 3, "max_terms": 3, "max_digits": 2}, eval_size=10, seed=3)
    b = make_task("chain_sum", {"min_terms": 3, "max_terms": 3, "max_digits": 2}, eval_size=10, seed=3)
    assert [b.example(i) for i in (5, 0, 9)] == [a.example(i) for i in (5, 0, 9)]
    assert a.batch(2, 4) == [a.example(i) for i in range(8, 12)]
    expression = a.example(0)["question"].rsplit(":", 1)[1].rstrip("=").strip()
    assert expression.count("+") + expression.count("-") == 2
    assert eval(expression) == int(a.example(0)["answer"])


def test_bad_task_options_are_clear_errors():
    with pytest.raises(ValueError, match="task 'chain_sum' with options"):
        make_task("chain_sum", {"min_terms": 4, "max_terms": 2}, eval_size=5)
    with pytest.raises(ValueError, match="unknown task 'sudoku'; built in: chain_sum, or give a dataset"):
        make_task("sudoku")
    with pytest.raises(ValueError, match="field_map and eval_dataset apply to datasets only"):
        make_task("chain_sum", field_map={"question": "q"})


def test_chain_sum_defaults_are_two_to_three_one_digit_terms():
    task = make_task("chain_sum", eval_size=50)
    terms = {ex["question"].rsplit(":", 1)[1].count("+") + ex["question"].rsplit(":", 1)[1].count("-") + 1
             for ex in task.eval_examples()}
    assert terms == {2, 3}


@pytest.mark.parametrize("suffix", ["csv", "json", "parquet"])
def test_a_dataset_task_may_be_any_data_file(tmp_path, suffix):
    import pandas as pd

    rows = pd.DataFrame({"problem": [f"q{i}" for i in range(6)], "solution": [str(i) for i in range(6)]})
    path = tmp_path / f"train.{suffix}"
    {"csv": lambda: rows.to_csv(path, index=False), "json": lambda: rows.to_json(path, orient="records"),
     "parquet": lambda: rows.to_parquet(path)}[suffix]()
    task = make_task(str(path), eval_size=2, field_map={"question": "problem", "answer": "solution"})
    assert [ex["question"] for ex in task.eval_examples()] == ["q4", "q5"]


def test_a_dataset_row_without_the_mapped_field_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"problem": "q0", "solution": "0"}\n{"problem": "q1"}\n')
    with pytest.raises(DataError, match=r"train.jsonl:2: missing field 'solution' \(mapped to 'answer'\)"):
        make_task(str(path), eval_size=0, field_map={"question": "problem", "answer": "solution"})


def test_jsonl_task_holds_out_its_last_rows(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(f'{{"problem": "q{i}", "solution": "{i}"}}\n' for i in range(10)))
    task = make_task(str(path), eval_size=3, field_map={"question": "problem", "answer": "solution"})
    assert [ex["question"] for ex in task.eval_examples()] == ["q7", "q8", "q9"]
    seen = {task.example(i)["question"] for i in range(14)}
    assert seen == {f"q{i}" for i in range(7)}  # every training row, each epoch reshuffled, none held out


def test_a_dataset_task_skips_and_counts_bad_rows_when_asked(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"question": "q0", "answer": "0"}\n{"question": "q1"}\nnot json\n'
                    '{"question": "q3", "answer": "3"}\n')
    task = make_task(str(path), eval_size=1, on_error="skip")
    assert [ex["question"] for ex in task.eval_examples()] == ["q3"]
    assert [m.split(": ", 1)[0] for m in task.skipped] == [f"{path}:2", f"{path}:3"]
    with pytest.raises(DataError, match=r"train.jsonl:2: missing field 'answer'"):
        make_task(str(path), eval_size=1)
