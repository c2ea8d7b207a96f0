"""samples.jsonl: appended and flushed, a cut last line dropped on reopening, no sample stored twice."""

import json

import pytest

from aha.data.readers import DataError
from aha.eval.samples import SampleStore


def rec(benchmark: str, problem: int, sample: int, **extra) -> dict:
    return {"benchmark": benchmark, "problem": problem, "sample": sample, **extra}


def test_append_reopen_and_deduplicate(tmp_path):
    path = tmp_path / "samples.jsonl"
    store = SampleStore(path)
    assert store.append([rec("a", 0, 0, completion="x"), rec("a", 0, 1)]) == 2
    assert store.append([rec("a", 0, 1), rec("b", 3, 0)]) == 1        # (a, 0, 1) is already there
    reopened = SampleStore(path)
    assert len(reopened) == 3 and ("a", 0, 0) in reopened and ("b", 3, 0) in reopened
    assert reopened.samples[("a", 0, 0)]["completion"] == "x"
    assert len(path.read_text().splitlines()) == 3


def test_a_line_cut_by_a_kill_is_dropped_and_the_file_repaired(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps(rec("a", 0, 0)) + "\n" + '{"benchmark": "a", "problem": 0, "sam')
    store = SampleStore(path)
    assert store.dropped_partial_line and len(store) == 1
    store.append([rec("a", 0, 1)])
    lines = path.read_text().splitlines()
    assert [json.loads(line)["sample"] for line in lines] == [0, 1]


def test_select_keeps_the_runs_problems_and_samples_in_order(tmp_path):
    store = SampleStore(tmp_path / "samples.jsonl")
    store.append([rec("a", p, s) for p in (2, 0, 1) for s in (1, 0, 2)] + [rec("b", 0, 0)])
    assert [(r["problem"], r["sample"]) for r in store.select("a", problems=2, k=2)] == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_a_foreign_line_is_an_error(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps(rec("a", 0, 0)) + "\n" + '{"step": 3}\n')
    with pytest.raises(DataError, match=r"samples.jsonl:2: not a sample record"):
        SampleStore(path)
