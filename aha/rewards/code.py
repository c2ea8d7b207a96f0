"""The ``code`` reward: run the completion's program in the sandbox against the sample's tests.

Two shapes of the ``tests`` column:

- a list of stdin/stdout cases ``[{"input": "...", "output": "..."}]`` (a JSON string of one is accepted):
  the program runs once per case; a case passes when it exits 0 within the limits and its stdout equals
  the expected output after whitespace normalisation (see :func:`normalise_output`);
- a string of assertion code (HumanEval style), run after the program in its namespace, followed by
  ``check(<entry point>)`` when the sample has an ``entry_point`` column: 1 when it all passes, else 0.

The verdict always comes from the harness (see :mod:`aha.rewards.sandbox`), never from what the program
prints or how it exits.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

from aha.rewards.registry import register_reward, report_failure
from aha.rewards.sandbox import CaseRun, Job, Sandbox, SandboxLimits

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = {"", "python", "python3", "py", "py3"}
_SANDBOXES: dict[tuple, Sandbox] = {}
_SANDBOXES_LOCK = threading.Lock()


def extract_code(text: str) -> str:
    """The last fenced Python block (```python or a bare ```), else the whole completion.

    >>> extract_code("Here:\\n```python\\nprint(1)\\n```\\nDone.")
    'print(1)\\n'
    """
    blocks = [body for tag, body in _FENCE.findall(text) if tag.lower() in _PYTHON_TAGS]
    return blocks[-1] if blocks else text


def normalise_output(text: str) -> list[str]:
    """Output compared line by line, each line's runs of whitespace collapsed, blank lines at the ends
    dropped: ``"1  2 \\n3\\n\\n"`` and ``"1 2\\n3"`` are equal."""
    return [" ".join(line.split()) for line in text.strip().splitlines()]


def parse_tests(tests: Any) -> list[dict[str, str]] | str | None:
    """The ``tests`` column as stdin/stdout cases, as assertion code, or None when it is missing/empty."""
    if tests is None:
        return None
    if isinstance(tests, str):
        stripped = tests.strip()
        if stripped.startswith("[") or stripped.startswith("{"):
            try:
                tests = json.loads(stripped)
            except json.JSONDecodeError:
                return stripped or None
        else:
            return stripped or None
    if isinstance(tests, dict) and "inputs" in tests and "outputs" in tests:  # columnar, as in APPS
        tests = [{"input": i, "output": o} for i, o in zip(tests["inputs"], tests["outputs"])]
    if isinstance(tests, list) and tests and all(isinstance(t, dict) and "input" in t and "output" in t
                                                 for t in tests):
        return [{"input": str(t["input"]), "output": str(t["output"])} for t in tests]
    raise ValueError(f"tests must be a list of {{input, output}} cases or a string of assertions, got {tests!r:.80}")


def stdio_passed(run: CaseRun, expected: str) -> bool:
    """A stdin/stdout case passes when the process exited 0 within every limit and printed ``expected``."""
    return run.status == "ok" and normalise_output(run.stdout) == normalise_output(expected)


def shared_sandbox(limits: SandboxLimits, workers: int | None, isolation: str) -> Sandbox:
    """One sandbox (and thread pool) per configuration, shared by every reward that asks for it."""
    key = (limits, workers, isolation)
    with _SANDBOXES_LOCK:
        if key not in _SANDBOXES:
            _SANDBOXES[key] = Sandbox(limits, workers, isolation)
        return _SANDBOXES[key]


def score_runs(tests: list[dict[str, str]] | str, runs: list[CaseRun], binary: bool) -> float | None:
    """The reward of one sample from its runs; None when the sandbox itself failed."""
    if any(run.status == "sandbox_error" for run in runs):
        return None
    if isinstance(tests, str):
        return 1.0 if runs[0].verified else 0.0
    passed = sum(stdio_passed(run, case["output"]) for run, case in zip(runs, tests))
    if binary:
        return 1.0 if passed == len(tests) else 0.0
    return passed / len(tests)


@register_reward("code")
def code(tests_field: str = "tests", entry_point_field: str = "entry_point", binary: bool = False,
         cpu_seconds: float = 2.0, wall_seconds: float = 5.0, memory_mb: int = 512, workers: int | None = None,
         isolation: str = "auto"):
    """Fraction of the sample's tests the completion's program passes in the sandbox (``binary``: 1 only
    when all pass); None when the sample has no tests or the sandbox failed (reported).

    tests_field / entry_point_field: dataset columns of the tests and of the function that ``check`` gets.
    cpu_seconds, wall_seconds, memory_mb: limits per test case. workers: parallel runs (default: cores).
    isolation: ``auto``, ``namespaces`` or ``process`` (see :class:`aha.rewards.sandbox.Sandbox`).
    """
    if not isinstance(binary, bool):
        raise ValueError(f"code: binary must be true or false, got {binary!r}")
    limits = SandboxLimits(cpu_seconds=cpu_seconds, wall_seconds=wall_seconds, memory_mb=memory_mb)
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"code: workers must be a positive integer, got {workers!r}")

    def reward(completions: list[str], **columns) -> list[float | None]:
        if tests_field not in columns:
            raise KeyError(f"code reward needs the dataset column {tests_field!r}; have {sorted(columns)}")
        entry_points = columns.get(entry_point_field) or [None] * len(completions)
        parsed = [parse_tests(t) for t in columns[tests_field]]
        jobs, owners = [], []
        for i, (completion, tests) in enumerate(zip(completions, parsed)):
            if tests is None:
                continue
            program = extract_code(completion)
            if isinstance(tests, str):
                jobs.append(Job(program, "assert", [""], tests, entry_points[i]))
            else:
                jobs.append(Job(program, "stdio", [case["input"] for case in tests]))
            owners.append(i)
        scores: list[float | None] = [None] * len(completions)
        sandbox = shared_sandbox(limits, workers, isolation)
        for i, runs in zip(owners, sandbox.map(jobs)):
            scores[i] = score_runs(parsed[i], runs, binary)
            if scores[i] is None:
                report_failure(i, f"sandbox error: {runs[0].stderr[:300]}")
        return scores

    return reward
