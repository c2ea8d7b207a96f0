"""N-gram decontamination between a training set and the benchmarks."""

import json

from aha.cli import main
from aha.data.decontaminate import find_contamination, ngrams


def test_ngrams_are_lowercased_word_windows():
    assert ngrams("What is 2 + 2, Bob?", 3) == {("what", "is", "2"), ("is", "2", "2"), ("2", "2", "bob")}
    assert ngrams("Too short", 8) == {("too", "short")}  # shorter than n: one n-gram of its own
    assert ngrams("", 8) == set()


def test_rows_sharing_an_ngram_are_found_and_counted():
    bench = {"b": ["Natalia sold clips to 48 of her friends in April and then half as many in May",
                   "A completely different question about triangles and their inscribed circles today"]}
    train = ["natalia SOLD clips to 48 of her friends, in april!",  # 8 shared words, case and punctuation aside
             "Natalia sold clips to her friends",                     # only 5 words in a row shared
             "completely different question about triangles and their inscribed circles"]
    report = find_contamination(train, bench, n=8)
    assert report.contaminated_rows == [0, 2]
    assert report.per_benchmark() == {"b": {"problems": 2, "problems_seen_in_training": 2, "training_rows": 2}}
    assert find_contamination(train, bench, n=13).contaminated_rows == []


def test_cli_reports_and_writes_the_clean_set(shared_data, tmp_path, capsys):
    gsm8k_first = json.loads((shared_data / "gsm8k.jsonl").read_text(encoding="utf-8").splitlines()[0])
    train = tmp_path / "train.jsonl"
    rows = [{"prompt": "Compute 17 * 23 and explain each step.", "answer": "391"},
            {"prompt": gsm8k_first["question"], "answer": "18"},
            {"prompt": "Name three prime numbers larger than one hundred.", "answer": "101"}]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    clean = tmp_path / "clean.jsonl"
    code = main(["data", "decontaminate", str(train), "--field-map", "question=prompt", "--benchmarks",
                 "gsm8k,aime24", "--data-dir", str(shared_data), "--output", str(clean)])
    out = capsys.readouterr().out
    assert code == 0
    assert "1 of 3 training rows share a 8-gram with a benchmark question" in out
    assert "gsm8k" in out and "1 of  1319 problems seen in training" in out
    assert [json.loads(line) for line in clean.read_text().splitlines()] == [rows[0], rows[2]]


def test_cli_check_lists_problems(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "q", "answer": "1"}\n{"question": "", "answer": "2"}\n', encoding="utf-8")
    assert main(["data", "check", str(path), "--on-error", "skip"]) == 0
    out = capsys.readouterr().out
    assert f"{path}: 1 usable records, 1 skipped" in out and f"{path}:2: field 'question' is empty" in out
    assert main(["data", "check", str(path)]) == 2
    assert f"aha: error: {path}:2: field 'question' is empty" in capsys.readouterr().err
