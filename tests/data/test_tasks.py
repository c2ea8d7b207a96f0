import pytest

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
    with pytest.raises(ValueError, match="unknown task 'sudoku'; valid: chain_sum"):
        make_task("sudoku")


def test_jsonl_task_holds_out_its_last_rows(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(f'{{"problem": "q{i}", "solution": "{i}"}}\n' for i in range(10)))
    task = make_task(str(path), eval_size=3, field_map={"question": "problem", "answer": "solution"})
    assert [ex["question"] for ex in task.eval_examples()] == ["q7", "q8", "q9"]
    seen = {task.example(i)["question"] for i in range(14)}
    assert seen == {f"q{i}" for i in range(7)}  # every training row, each epoch reshuffled, none held out
