"""Loading and validating records: every malformed input is reported as ``file:line: what is wrong``."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aha.data.records import DataError, join_parts, load_records, parse_field_map


def write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


GOOD = '{"problem": "1+1?", "answer": "2"}\n'

# (file name, content, field map, expected message after the file name)
MALFORMED = [
    ("bad-json.jsonl", GOOD + '{"problem": "2+2?", "answer": \n', {"question": "problem"},
     ":2: malformed JSON at column 31: Expecting value"),
    ("not-utf8.jsonl", (GOOD + GOOD).encode() + b'{"problem": "caf\xe9", "answer": "1"}\n',  # a latin-1 e-acute
     {"question": "problem"}, ":3: not valid UTF-8 (byte 17 of the line)"),
    ("missing-mapped.jsonl", GOOD + '{"question": "3+3?", "answer": "6"}\n', {"question": "problem"},
     ":2: missing field 'problem' (mapped to 'question'); fields present: answer, question"),
    ("missing-answer.jsonl", '{"question": "3+3?", "solution": "6"}\n', None,
     ":1: missing field 'answer'; fields present: question, solution (map one with field_map={answer: <field>})"),
    ("empty-question.jsonl", GOOD + GOOD + '{"problem": "   ", "answer": "2"}\n', {"question": "problem"},
     ":3: field 'problem' is empty"),
    ("null-answer.jsonl", '{"question": "1+1?", "answer": null}\n', None, ":1: field 'answer' is empty"),
    ("array-line.jsonl", GOOD + '["1+1?", "2"]\n', {"question": "problem"}, ":2: expected a JSON object, got an array"),
    ("question-not-text.jsonl", '{"question": {"text": "1+1?"}, "answer": "2"}\n', None,
     ":1: field 'question' is not text (got dict {'text': '1+1?'})"),
    ("composite-missing.jsonl", '{"Body": "5 apples", "Answer": 5}\n',
     {"question": "Body + Question", "answer": "Answer"},
     ":1: missing field 'Question' (mapped to 'question'); fields present: Answer, Body"),
    ("cut-last-line.jsonl", GOOD + '{"problem": "4+4?", "ans', {"question": "problem"},
     ":2: malformed JSON at column 21: Unterminated string starting at"),
    ("bad.json", '[\n  {"problem": "1+1?", "answer": "2"},\n  {"problem": "2+2?" "answer": "4"}\n]\n',
     {"question": "problem"}, ":3: malformed JSON at column 22: Expecting ',' delimiter"),
    ("scalar-row.json", '[{"problem": "1+1?", "answer": "2"}, 7]', {"question": "problem"},
     ":row 2: expected a JSON object, got a number"),
    ("missing-column.csv", "problem,solution\n1+1?,2\n", {"question": "problem"},
     ":2: missing field 'answer'; fields present: problem, solution (map one with field_map={answer: <field>})"),
    ("empty-cell.csv", "problem,answer\n1+1?,2\n\"\",3\n", {"question": "problem"}, ":3: field 'problem' is empty"),
    ("ragged.csv", "problem,answer\n1+1?,2\n2+2?,4,extra\n", {"question": "problem"},
     ":3: expected 2 columns as in the header, got 3"),
]


@pytest.mark.parametrize("name, content, field_map, expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_input_is_reported_with_file_and_line(tmp_path, name, content, field_map, expected):
    path = write(tmp_path, name, content)
    with pytest.raises(DataError) as err:
        load_records(path, field_map)
    assert str(err.value) == f"{path}{expected}"


def test_skip_mode_skips_and_counts_every_bad_row(tmp_path):
    lines = [GOOD, '{"problem": "", "answer": "1"}\n', "not json\n", GOOD, '{"problem": "x"}\n']
    path = write(tmp_path, "mixed.jsonl", "".join(lines))
    result = load_records(path, {"question": "problem"}, on_error="skip")
    assert [r["question"] for r in result.records] == ["1+1?", "1+1?"]
    assert result.skipped == [f"{path}:2: field 'problem' is empty",
                              f"{path}:3: malformed JSON at column 1: Expecting value",
                              f"{path}:5: missing field 'answer'; fields present: problem "
                              "(map one with field_map={answer: <field>})"]


def test_skip_mode_with_nothing_usable_says_so(tmp_path):
    path = write(tmp_path, "bad.jsonl", "x\n")
    with pytest.raises(DataError, match=r"bad.jsonl: no records \(1 rows skipped; the first: .*bad.jsonl:1: malformed"):
        load_records(path, on_error="skip")


def test_file_level_problems(tmp_path):
    with pytest.raises(DataError, match=r"nope.jsonl: file not found"):
        load_records(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"empty.jsonl: no records$"):
        load_records(write(tmp_path, "empty.jsonl", "\n\n"))
    with pytest.raises(DataError, match=r"data.txt: unsupported file type; use one of .jsonl"):
        load_records(write(tmp_path, "data.txt", GOOD))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no data files in this folder"):
        load_records(tmp_path / "empty")
    with pytest.raises(DataError, match=r"obj.json: expected a JSON array of objects \(or an object holding exactly "
                                        r"one array\), got an object with keys a, b"):
        load_records(write(tmp_path, "obj.json", '{"a": 1, "b": 2}'))
    with pytest.raises(DataError, match=r"bad.csv:2: not valid UTF-8"):
        load_records(write(tmp_path, "bad.csv", b"question,answer\n\xff\xfe,1\n"))


def test_every_format_reads_the_same_records(tmp_path):
    rows = [{"problem": "1+1?", "answer": 2}, {"problem": "Name a colour, then stop.", "answer": "red"}]
    write(tmp_path, "a.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write(tmp_path, "a.jsonl.gz", gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    write(tmp_path, "a.json", json.dumps({"data": rows}))
    write(tmp_path, "a.csv", 'problem,answer\n1+1?,2\n"Name a colour, then stop.",red\n')
    pq.write_table(pa.Table.from_pylist([{**r, "answer": str(r["answer"])} for r in rows]), tmp_path / "a.parquet")
    for name in ["a.jsonl", "a.jsonl.gz", "a.json", "a.csv", "a.parquet"]:
        records = load_records(tmp_path / name, "question=problem").records
        assert [(r["question"], str(r["answer"])) for r in records] == [("1+1?", "2"), ("Name a colour, then stop.",
                                                                                          "red")], name
    folder = load_records(tmp_path, "question=problem").records  # a folder: every file, in name order
    assert len(folder) == 10


def test_parquet_rows_are_numbered(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"problem": "1+1?", "answer": "2"}, {"problem": None, "answer": "3"}]),
                   tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"p.parquet:row 2: field 'problem' is empty"):
        load_records(tmp_path / "p.parquet", {"question": "problem"})


def test_hub_names_go_through_datasets(monkeypatch):
    import datasets

    import aha.data.readers as readers

    monkeypatch.setattr(readers, "hub_reachable", lambda: True)  # as where the hub answers
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list([{"problem": "1+1?", "answer": "2"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    records = load_records("some-org/some-set:train", "question=problem").records
    assert calls == [("some-org/some-set", "train")]
    assert records[0]["question"] == "1+1?"

    def offline(name, split):
        raise ConnectionError("the hub is unreachable")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"some-org/some-set: cannot load the hub dataset \(split 'test'\): "
                                        r"ConnectionError: the hub is unreachable"):
        load_records("some-org/some-set")


def test_field_map_syntax():
    assert parse_field_map("question=problem answer=answer") == {"question": "problem", "answer": "answer"}
    assert parse_field_map("question=Body + Question, answer=Answer") == {"question": "Body + Question",
                                                                           "answer": "Answer"}
    assert parse_field_map({"question": "problem"}) == {"question": "problem"}
    with pytest.raises(DataError, match="'problem' is not ours=theirs"):
        parse_field_map("problem")


def test_composite_fields_join_like_the_harnesses():
    assert join_parts(["There are 5 apples", "How many?"]) == "There are 5 apples. How many?"
    assert join_parts(["  There are 5 apples. ", "How many?"]) == "There are 5 apples. How many?"
    assert join_parts(["Body only", None]) == "Body only"


def test_mapped_fields_are_added_and_the_source_fields_kept(tmp_path):
    path = write(tmp_path, "t.jsonl", '{"problem": "1+1?", "answer": "2", "extra": 1}\n')
    assert load_records(path, {"question": "problem"}).records == [{"problem": "1+1?", "answer": "2", "extra": 1,
                                                                   "question": "1+1?"}]
    with pytest.raises(DataError, match=r"t.jsonl:1: missing field 'question'"):
        load_records(path)


def test_a_hub_dataset_offline_fails_at_once_and_says_why(monkeypatch):
    import aha.data.readers as readers

    monkeypatch.setattr(readers, "hub_reachable", lambda: False)
    with pytest.raises(DataError, match=r"aha-tests/none: cannot load the hub dataset \(split 'train'\) \(the Hugging "
                                        "Face hub is unreachable: only the local datasets cache was read\\)"):
        list(readers.read_hub("aha-tests/none", "train"))  # offline mode: no minute of retries first
