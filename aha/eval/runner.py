"""``aha eval``: sample k completions per benchmark problem, grade them with the training rewards, and
report pass@1, pass@k and cons@k.

The loop, per benchmark:
    problems = load_benchmark(name)                      validated up front, file:line errors
    for each batch of the problems still missing samples:   batch_size // k problems
        generations = sampler.sample(prompts, k)          seeded from (seed, benchmark, problem, sample)
        grader.submit(completions)                        worker processes; generation goes on
        append graded samples to samples.jsonl            flushed as each batch is graded
    metrics from samples.jsonl, majority votes in the workers -> results.json, printed table
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import zlib
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from aha.config import ConfigError, EvalConfig, aliases, save_config
from aha.data.benchmarks import BenchmarkData, load_benchmark
from aha.data.tasks import TASKS, make_task
from aha.eval.grading import Grader, GradeSpec, check_reward_exists, grade_spec
from aha.eval.metrics import benchmark_metrics
from aha.eval.report import EvalProgress, results_table, versions
from aha.eval.samplers import Sampler, make_sampler
from aha.eval.samples import SampleStore
from aha.rollout.base import SamplingParams
from aha.utils.console import make_console
from aha.utils.io import atomic_write_json
from aha.utils.signals import GracefulStop

SAMPLE_DEFINING = ("model", "api_base", "tokenizer", "api_chat", "temperature", "top_p", "max_completion_length",
                   "stop_strings", "prompt_template", "system_prompt", "question_template", "prefill",
                   "use_chat_template", "seed", "fallback_last_number", "field_map")
"""Fields whose change would make stored samples differ from new ones: a resumed evaluation must match them."""


def sample_settings(config: EvalConfig) -> dict[str, Any]:
    """The settings that define the samples (see SAMPLE_DEFINING), as stored beside them; the task options only
    when given (an evaluation stored without them resumes as before)."""
    settings = {name: getattr(config, name) for name in SAMPLE_DEFINING}
    if config.task_options:
        settings["task_options"] = config.task_options
    return settings

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """Problems generated together; ``missing`` are the (problem, sample) pairs not yet in samples.jsonl."""

    data: BenchmarkData
    problem_indices: list[int]
    missing: set[tuple[int, int]]


def problem_seed(seed: int, benchmark: str, problem: int) -> int:
    """The sampling seed of a problem's first sample (sample j: this + j): a fixed function of the run seed,
    the benchmark and the problem's place in it, so a sample's random draws do not depend on the batch it was
    drawn in."""
    return zlib.crc32(f"{seed}:{benchmark}:{problem}".encode()) & 0x7FFFFFFF


def plan_batches(datasets: list[BenchmarkData], store: SampleStore, k: int, batch_size: int) -> list[Batch]:
    """The problems that still miss samples, ``batch_size // k`` to a batch. Each sample is seeded by its
    problem and number (:func:`problem_seed`), so a resumed run draws what an uninterrupted one would have,
    whatever the batch size of either."""
    per_batch = max(1, batch_size // k)
    batches = []
    for data in datasets:
        todo = [p for p in range(len(data.problems)) if any((data.name, p, s) not in store for s in range(k))]
        for start in range(0, len(todo), per_batch):
            indices = todo[start : start + per_batch]
            missing = {(p, s) for p in indices for s in range(k) if (data.name, p, s) not in store}
            batches.append(Batch(data, indices, missing))
    return batches


def benchmark_spec(data: BenchmarkData, config: EvalConfig) -> GradeSpec:
    return grade_spec(data.benchmark.reward, data.benchmark.reward_options, config.fallback_last_number)


def check_task_options(config: EvalConfig) -> None:
    """``task_options`` name a built-in task among the benchmarks and are options it takes (a ConfigError naming
    the field, before anything is written or loaded)."""
    if not config.task_options:
        return
    tasks = [name for name in config.benchmarks if name in TASKS]
    config.require(bool(tasks), "task_options", f"apply to a built-in task benchmark ({', '.join(TASKS.names())}); "
                                                f"none among {', '.join(config.benchmarks)}")
    for name in tasks:
        try:
            make_task(name, dict(config.task_options), 1, 0)
        except ValueError as err:
            raise config.error("task_options", str(err)) from None


def prepare_output(config: EvalConfig) -> Path:
    """Create the output folder; when it holds samples, check they were made with the same settings."""
    out = Path(config.output_dir or time.strftime("runs/eval-%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / "settings.json"
    settings = json.loads(json.dumps(sample_settings(config)))
    if settings_path.exists() and (out / "samples.jsonl").exists():
        stored = json.loads(settings_path.read_text(encoding="utf-8"))
        stored = {aliases(EvalConfig).get(k, k): v for k, v in stored.items()}  # written under former names
        keys = [*settings, *(["task_options"] if "task_options" in stored and "task_options" not in settings else [])]
        changed = [f"{k}: {stored.get(k)!r} there, {settings.get(k)!r} now" for k in keys
                   if stored.get(k) != settings.get(k)]
        if changed:
            raise ConfigError(f"{out} holds samples made with other settings ({'; '.join(changed)}); use another "
                              "--output, or the same settings to resume")
    atomic_write_json(settings_path, settings)
    save_config(config, out / "config.yaml")
    return out


class Evaluation:
    """One ``aha eval`` invocation (see the module docstring)."""

    def __init__(self, config: EvalConfig, console: Console | None = None):
        config.validate()
        check_task_options(config)
        self.config = config
        self.console = console or make_console(160)
        self.out = prepare_output(config)
        self.datasets = [load_benchmark(name, config.data_dir, config.limit, config.on_error, config.field_map,
                                       config.task_options)
                         for name in config.benchmarks]
        self.specs = {d.name: benchmark_spec(d, config) for d in self.datasets}
        for data in self.datasets:
            check_reward_exists(self.specs[data.name], data.name)
            if data.skipped:
                self.console.log(f"{data.name}: skipped {len(data.skipped)} malformed rows; the first: "
                                 f"{data.skipped[0]}")
        self.store = SampleStore(self.out / "samples.jsonl")
        self.generated = 0
        self.generated_tokens = 0
        self.generation_seconds = 0.0
        self.sampler: Sampler | None = None

    def run(self) -> dict[str, Any]:
        c = self.config
        batches = plan_batches(self.datasets, self.store, c.k, c.generation_batch_size)
        total = sum(len(b.missing) for b in batches)
        if len(self.store):
            self.console.log(f"{self.out}: {len(self.store)} samples already there; {total} to go")
        if batches:
            self.sampler = make_sampler(c)
        params = SamplingParams(c.max_completion_length, c.temperature, c.top_p, tuple(c.stop_strings))
        with Grader(c.grader_workers) as grader, GracefulStop(self.console, "the current batch") as stop:
            pending: list[tuple[Future, list[dict[str, Any]]]] = []
            with EvalProgress(self.console, total) as progress:
                for batch in batches:
                    if stop.requested:
                        break
                    records = self._generate(batch, params)
                    spec = self.specs[batch.data.name]
                    columns = _columns(batch.data, records)
                    pending.append((grader.submit(spec, [r["completion"] for r in records], columns), records))
                    pending = self._write_graded(pending, wait=False)
                    progress.advance(len(records), batch.data.name)
                self._write_graded(pending, wait=True)
            if stop.requested:
                self.console.log(f"stopped by {stop.signal_name}: {len(self.store)} samples are in "
                                 f"{self.out / 'samples.jsonl'}; run the same command again to finish")
                return {"stopped": stop.signal_name, "samples": len(self.store)}
            results = self._results(grader)
        atomic_write_json(self.out / "results.json", results)
        self.console.print(results_table(results))
        self.console.log(f"wrote {self.out / 'results.json'} and {self.out / 'samples.jsonl'}")
        return results

    def _generate(self, batch: Batch, params: SamplingParams) -> list[dict[str, Any]]:
        """Sample k completions of each problem of the batch; the records of the missing samples."""
        c, data = self.config, batch.data
        problems = [data.problems[i] for i in batch.problem_indices]
        questions = [p["question"] for p in problems]
        prompts = self.sampler.prompts(questions)
        t0 = time.perf_counter()
        seeds = [problem_seed(c.seed, data.name, i) for i in batch.problem_indices]
        generations = self.sampler.sample(prompts, c.k, params, seeds)
        self.generation_seconds += time.perf_counter() - t0
        records = []
        for offset, (index, problem) in enumerate(zip(batch.problem_indices, problems)):
            for s in range(c.k):
                if (index, s) not in batch.missing:
                    continue
                gen = generations[offset * c.k + s]
                tokens = getattr(gen, "completion_tokens", 0) or len(gen.token_ids)
                self.generated += 1
                self.generated_tokens += tokens
                records.append({
                    "benchmark": data.name, "problem": index, "sample": s,
                    "id": problem.get(data.benchmark.id_field) if data.benchmark.id_field else None,
                    "question": questions[offset], "prompt": prompts[offset], "completion": gen.text,
                    "answer": problem["answer"],
                    "finish_reason": gen.finish_reason, "tokens": tokens,
                })
        return records

    def _write_graded(self, pending: list[tuple[Future, list[dict[str, Any]]]], wait: bool):
        """Append the graded batches to samples.jsonl, in order; returns the batches still being graded."""
        while pending and (wait or pending[0][0].done()):
            future, records = pending.pop(0)
            for record, verdict in zip(records, future.result()):
                record.update(verdict)
            self.store.append(records)
        return pending

    def _results(self, grader: Grader) -> dict[str, Any]:
        c = self.config
        per_benchmark = {}
        for data in self.datasets:
            samples = self.store.select(data.name, len(data.problems), c.k)
            votes = self._votes(grader, data, samples)
            per_benchmark[data.name] = {**benchmark_metrics(samples, votes, c.pass_k), "source": data.source,
                                        "skipped_rows": len(data.skipped)}
            if c.task_options and data.name in TASKS:  # the problems a run with these options holds out
                per_benchmark[data.name]["task_options"] = dict(c.task_options)
        sampling = "greedy" if c.temperature == 0 else f"T={c.temperature} top-p={c.top_p}"
        return {
            "model": c.model, "model_path": getattr(self.sampler, "model_path", None),
            "backend": getattr(self.sampler, "backend_name", None) or ("openai" if c.api_base else "transformers"),
            "sampling": f"{sampling}, k={c.k}, max {c.max_completion_length} tokens, prompt {c.prompt_template}",
            "seed": c.seed, "benchmarks": per_benchmark,
            "speed": {"generated_samples": self.generated, "generation_seconds": round(self.generation_seconds, 3),
                      "samples_per_s": self.generated / self.generation_seconds if self.generation_seconds else None,
                      "tokens_per_s": self.generated_tokens / self.generation_seconds if self.generation_seconds
                      else None},
            "config": dataclasses.asdict(c), "versions": versions(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def _votes(self, grader: Grader, data: BenchmarkData, samples: list[dict[str, Any]]) -> dict[int, bool | None]:
        """Problem -> whether its majority-voted answer is correct (math benchmarks; {} for code)."""
        if not self.specs[data.name].votes:
            return {}
        by_problem: dict[int, list[dict[str, Any]]] = {}
        for sample in samples:
            by_problem.setdefault(sample["problem"], []).append(sample)
        problems = sorted(by_problem)
        winners = grader.votes([[s.get("extracted") for s in by_problem[p]] for p in problems])
        return {p: (None if w is None else bool(by_problem[p][w]["correct"])) for p, w in zip(problems, winners)}


def _columns(data: BenchmarkData, records: list[dict[str, Any]]) -> dict[str, list]:
    """The dataset columns the reward sees for each record (its problem's fields; ``answer`` is the gold)."""
    problems = [data.problems[r["problem"]] for r in records]
    keys = sorted({key for p in problems for key in p})
    return {key: [p.get(key) for p in problems] for key in keys}


def evaluate(config: EvalConfig, console: Console | None = None) -> dict[str, Any]:
    """Run an evaluation (resuming from the samples already in ``config.output``) and return results.json's content."""
    return Evaluation(config, console).run()
