"""``aha sample``: rejection sampling as R1 does it. Take k traces per prompt (generated from a model into the
traces file, or an ``aha generate`` file), keep those whose answer the training grader verifies, drop the
unreadable ones (see :mod:`aha.pipeline.filters`), drop duplicates, keep at most m per prompt, and write
the rest as rows for ``aha sft`` with a report of how many each filter removed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from aha.config import ConfigError
from aha.config.generate import SampleConfig
from aha.data.readers import DataError
from aha.eval.grading import grade, grade_spec
from aha.pipeline.filters import READABILITY, normalised
from aha.pipeline.traces import generate_traces
from aha.rewards import REWARDS
from aha.utils.io import JsonlFile, atomic_write_json, atomic_write_text, jsonl_text

STAGES = ["unverified", *(name for name, _ in READABILITY), "duplicate", "over_per_prompt_cap"]


def read_traces(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: traces file not found")
    rows = []
    for number, row in JsonlFile(path).lines():
        if not isinstance(row.get("completion"), str) or not isinstance(row.get("question"), str):
            raise DataError(f"{path}:{number}: a trace needs text fields `question` and `completion`")
        rows.append({"prompt_index": row.get("prompt_index", len(rows)), "sample": row.get("sample", 0), **row})
    if not rows:
        raise DataError(f"{path}: no traces")
    return rows


def verdicts(config: SampleConfig, traces: list[dict[str, Any]]) -> list[bool]:
    """Whether the grader pays each trace (always true with verify_with=none)."""
    if config.verify_with == "none":
        return [True] * len(traces)
    if config.verify_with not in REWARDS:
        raise ConfigError(f"verify_with: unknown reward {config.verify_with!r}; valid: none, "
                          f"{', '.join(REWARDS.names())}")
    needed = {"accuracy": "answer", "code": "tests"}.get(config.verify_with)
    if needed and not any(needed in t for t in traces):
        raise ConfigError(f"verify_with={config.verify_with}: the traces have no `{needed}` field to verify against "
                          "(map it with field_map, or verify_with=none)")
    keys = sorted({k for t in traces for k in t})
    columns = {k: [t.get(k) for t in traces] for k in keys}
    graded = grade(grade_spec(config.verify_with), [t["completion"] for t in traces], columns)
    return [g["correct"] for g in graded]


def select(config: SampleConfig, traces: list[dict[str, Any]], verified: list[bool]
           ) -> tuple[list[dict[str, Any]], dict[str, int], dict[str, str]]:
    """(kept traces, how many each stage removed, one example reason per stage)."""
    removed = dict.fromkeys(STAGES, 0)
    examples: dict[str, str] = {}
    kept: list[dict[str, Any]] = []
    seen: dict[Any, set[str]] = {}
    per_prompt: dict[Any, int] = {}

    def drop(stage: str, trace: dict[str, Any], why: str) -> None:
        removed[stage] += 1
        examples.setdefault(stage, f"prompt {trace['prompt_index']} sample {trace['sample']}: {why}")

    order = sorted(range(len(traces)), key=lambda i: (traces[i]["prompt_index"], traces[i]["sample"]))
    for i in order:
        trace, text = traces[i], traces[i]["completion"]
        if not verified[i]:
            drop("unverified", trace, "the grader does not pay its answer")
            continue
        problem = next(((name, why) for name, check in READABILITY if (why := check(text, config))), None)
        if problem:
            drop(problem[0], trace, problem[1])
            continue
        prompt = trace["prompt_index"]
        if config.dedupe and normalised(text) in seen.setdefault(prompt, set()):
            drop("duplicate", trace, "the same text as a kept trace")
            continue
        if config.max_per_prompt and per_prompt.get(prompt, 0) >= config.max_per_prompt:
            drop("over_per_prompt_cap", trace, f"{config.max_per_prompt} already kept")
            continue
        seen[prompt].add(normalised(text))
        per_prompt[prompt] = per_prompt.get(prompt, 0) + 1
        kept.append({"prompt": trace["question"], "completion": text, **trace})
    return kept, removed, examples


def rejection_sample(config: SampleConfig, console: Console) -> dict[str, Any]:
    """Run rejection sampling (see the module docstring); returns the report written beside the output."""
    if config.prompts:
        generated = generate_traces(config, console, output=config.traces_path)
        if generated.stopped:
            return {"stopped": generated.stopped, "traces": len(generated.rows)}
        traces, source = generated.ordered(), config.traces_path
    else:
        traces, source = read_traces(config.traces), config.traces
    kept, removed, examples = select(config, traces, verdicts(config, traces))
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, jsonl_text(kept))
    prompts = {t["prompt_index"] for t in traces}
    report = {"traces": len(traces), "prompts": len(prompts), "source": str(source), "removed": removed,
              "kept": len(kept), "prompts_kept": len({k["prompt_index"] for k in kept}), "examples": examples,
              "output": str(output)}
    atomic_write_json(output.with_name(output.name.removesuffix(".jsonl") + ".report.json"), report)
    console.print(report_table(report))
    return report


def report_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"rejection sampling: {report['traces']} traces of {report['prompts']} prompts")
    table.add_column("stage")
    table.add_column("removed", justify="right")
    table.add_column("example")
    for stage in STAGES:
        table.add_row(stage, str(report["removed"][stage]), report["examples"].get(stage, ""))
    table.add_row("kept", str(report["kept"]), f"{report['prompts_kept']} prompts with at least one")
    return table
