"""``aha distill``: distillation in one command, every stage resumable.

    traces.jsonl        the teacher's k traces per prompt (aha generate), or an existing traces file
    kept.jsonl          the verified, readable ones (aha sample), with kept.report.json
    eval/               the teacher and each student before and after, greedy on the same held-out set
    students/<name>/    each student's training run (aha sft; aha train with a teacher for on_policy)
    retention.json      student accuracy / teacher accuracy, before and after; summary.json

Re-running the same command resumes: the traces file adds only what is missing, a finished student run is
not trained again (an interrupted one resumes from its checkpoint), and an evaluation already made of the
same weights is read back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from aha.config import ConfigError, GRPOConfig, SFTConfig, load_config
from aha.config.distill import DistillConfig
from aha.config.generate import SampleConfig
from aha.data.tasks import make_task
from aha.eval.grading import grade_spec
from aha.eval.heldout import evaluate_sampler
from aha.eval.samplers import make_sampler
from aha.pipeline.sample import rejection_sample
from aha.pipeline.traces import generate_traces
from aha.run import RunLayout, resolve_model_source
from aha.utils.io import JsonlFile, atomic_write_json, file_sha256

PROMPT_FIELDS = ("prompt_template", "system_prompt", "question_template", "prefill", "use_chat_template")


def slug(name: str) -> str:
    """A folder name for a model name or path."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip("/")).strip("-")[-60:] or "student"


def student_config(config: DistillConfig, student: str, dataset: Path, output_dir: Path):
    """The training config of one student: the distillation's prompt and run settings, then ``config.sft``."""
    shared = {"model": student, "output_dir": str(output_dir), "seed": config.seed, "resume": True,
              "deterministic": config.deterministic, "threads": config.threads, "dtype": config.dtype,
              "matmul_precision": config.matmul_precision,
              "device": config.device, **{k: getattr(config, k) for k in PROMPT_FIELDS}}
    if config.method == "on_policy":
        base = {**shared, "teacher": config.model, "task": config.prompts or config.eval_task,
                "eval_size": config.eval_size,
                "max_completion_length": config.max_completion_length, "stop_strings": config.stop_strings,
                "rewards": {}, "max_train_minutes": 0.0}
        cls = GRPOConfig
    else:
        base = {**shared, "dataset": str(dataset), "field_map": {}, "eval_fraction": 0.0}
        if config.method == "logit":
            base["teacher"] = config.model
        cls = SFTConfig
    overrides = []
    for key, value in config.sft.items():
        overrides.append(f"{key}={_yaml(value)}")
    try:
        return load_config(cls, overrides=overrides, base=base)
    except ConfigError as err:
        raise ConfigError(f"{config.where('sft')}sft: {err}") from None


def _yaml(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def heldout_examples(config: DistillConfig) -> list[dict[str, Any]]:
    name = config.eval_task or config.prompts
    task = make_task(name, {}, config.eval_size, config.seed)
    return task.eval_examples()[: config.eval_size]


def weights_id(source: str) -> str:
    """Names a model's weights: the folder and the size and time of its weight files."""
    path = Path(source)
    stamp = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(path.glob("*.safetensors"))] \
        if path.is_dir() else []
    return hashlib.sha1(f"{source}|{'|'.join(stamp)}".encode()).hexdigest()[:16]


def evaluate_model(config: DistillConfig, model: str, examples, out: Path, console: Console,
                   served: bool = False) -> dict[str, Any]:
    """Greedy held-out accuracy of ``model`` (read back from ``out`` when it was made of the same weights)."""
    source = model if served else resolve_model_source(model)
    key = weights_id(source)
    if out.exists():
        stored = JsonlFile(out).read()
        if stored and stored[0].get("weights") == key and stored[0].get("problems") == len(examples):
            return stored[0]
    settings = {**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)}, "model": source}
    if not served:
        settings["api_base"] = None
    sampler = make_sampler(_Settings(settings))
    t0 = time.perf_counter()
    result = evaluate_sampler(sampler, examples, config.max_completion_length, tuple(config.stop_strings),
                              grade_spec("accuracy"))
    record = {"model": model, "source": source, "weights": key, "problems": len(examples), **result.metrics(),
              "seconds": round(time.perf_counter() - t0, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out.with_suffix(".samples.json"), result.samples)
    out.unlink(missing_ok=True)
    JsonlFile(out).append(record)
    console.log(f"held-out {model}: {result.line()}")
    return record


class _Settings:
    """Attribute access to a dict of config values (the samplers read configs by attribute)."""

    def __init__(self, values: dict[str, Any]):
        self.__dict__.update(values)

    @property
    def prefill_text(self) -> str:
        if self.prefill is not None:
            return self.prefill
        return "<think>" if self.prompt_template == "r1-zero" else ""


def distill(config: DistillConfig, console: Console) -> dict[str, Any]:
    """Run the distillation (see the module docstring); returns summary.json's content."""
    root = Path(config.output_dir or time.strftime("runs/distill-%Y%m%d-%H%M%S"))
    root.mkdir(parents=True, exist_ok=True)
    kept_path = root / "kept.jsonl"
    for student in config.students:  # every student's settings checked before any work
        student_config(config, student, kept_path, root / "students" / slug(student))
    served = bool(config.api_base)
    examples = heldout_examples(config)
    started = time.perf_counter()

    traces_path = Path(config.traces) if config.traces else root / "traces.jsonl"
    if not config.traces and generate_traces(config, console, output=traces_path).stopped:
        return {"stopped": True}
    sample_values = {f.name: getattr(config, f.name) for f in dataclasses.fields(SampleConfig)
                     if hasattr(config, f.name)}
    sample_config = SampleConfig(**{**sample_values, "prompts": "", "traces": str(traces_path),
                                    "output": str(kept_path)})
    sample_report = rejection_sample(sample_config, console)
    if not sample_report["kept"]:
        raise ConfigError(f"{traces_path}: no trace passed the filters ({sample_report['removed']}); a student "
                          "has nothing to learn from")

    teacher = evaluate_model(config, config.model, examples, root / "eval" / "teacher.jsonl", console, served)
    rows = []
    for student in config.students:
        name = slug(student)
        run_dir = root / "students" / name
        before = evaluate_model(config, student, examples, root / "eval" / f"{name}-before.jsonl", console)
        if train(config, student_config(config, student, kept_path, run_dir), console, kept_path).get("stopped"):
            return {"stopped": True}
        after = evaluate_model(config, str(run_dir), examples, root / "eval" / f"{name}-after.jsonl", console)
        rows.append(retention_row(student, teacher, before, after, run_dir))
    summary = {"method": config.method, "teacher": teacher, "students": rows, "traces": str(traces_path),
               "kept": sample_report["kept"], "traces_total": sample_report["traces"],
               "held_out_problems": len(examples), "minutes": round((time.perf_counter() - started) / 60, 2)}
    atomic_write_json(root / "retention.json", rows)
    atomic_write_json(root / "summary.json", summary)
    console.print(retention_table(summary))
    return summary




def train(config: DistillConfig, student: SFTConfig | GRPOConfig, console: Console, data: Path) -> dict[str, Any]:
    """Train one student, resuming its run; a run made from other kept traces is started afresh."""
    from aha.trainer import rl_trainer
    from aha.trainer.sft import SFTTrainer

    layout = RunLayout(student.output_dir)
    source = layout.root / "distill-source.json"
    made_from = {"kept_sha256": file_sha256(data), "method": config.method}
    stored = json.loads(source.read_text(encoding="utf-8")) if source.exists() else None
    if layout.holds_run() and stored != made_from:
        console.log(f"{layout.root}: trained on other (or unknown) traces; training again")
        layout.clear()
    layout.root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(source, made_from)
    if layout.summary.exists() and layout.latest_checkpoint() is not None:
        summary = json.loads(layout.summary.read_text(encoding="utf-8"))
        if not summary.get("stopped"):
            console.log(f"{student.model}: trained already ({layout.root})")
            return summary
    if isinstance(student, GRPOConfig):
        return rl_trainer(student, console=console).fit()
    return SFTTrainer.from_config(student, console=console).fit()


def retention_row(student: str, teacher: dict, before: dict, after: dict, run_dir: Path) -> dict[str, Any]:
    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 4) if b else None

    return {"student": student, "run_dir": str(run_dir),
            "strict_before": before["strict_accuracy"], "strict_after": after["strict_accuracy"],
            "lenient_before": before["lenient_accuracy"], "lenient_after": after["lenient_accuracy"],
            "teacher_strict": teacher["strict_accuracy"], "teacher_lenient": teacher["lenient_accuracy"],
            "retention_strict_before": ratio(before["strict_accuracy"], teacher["strict_accuracy"]),
            "retention_strict_after": ratio(after["strict_accuracy"], teacher["strict_accuracy"]),
            "retention_lenient_after": ratio(after["lenient_accuracy"], teacher["lenient_accuracy"])}


def retention_table(summary: dict[str, Any]) -> Table:
    t = summary["teacher"]
    table = Table(title=f"{summary['method']} distillation: {summary['kept']} kept of {summary['traces_total']} "
                        f"traces; teacher strict {100 * t['strict_accuracy']:.1f}%, lenient "
                        f"{100 * t['lenient_accuracy']:.1f}% on {summary['held_out_problems']} held-out problems")
    for column in ("student", "strict before -> after", "lenient before -> after", "retention (strict)"):
        table.add_column(column, justify="left" if column == "student" else "right")

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    for row in summary["students"]:
        table.add_row(row["student"], f"{pct(row['strict_before'])} -> {pct(row['strict_after'])}",
                      f"{pct(row['lenient_before'])} -> {pct(row['lenient_after'])}",
                      f"{pct(row['retention_strict_before'])} -> {pct(row['retention_strict_after'])}")
    return table
