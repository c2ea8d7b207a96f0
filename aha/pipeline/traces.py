"""``aha generate``: reasoning traces from a teacher — a local model (batched through the rollout backend) or
an OpenAI-compatible server (concurrent requests, retries with back-off, a rate limit) — k samples per prompt,
each written to the traces file as it arrives.

The traces file is the unit of resumption. Each line carries ``prompt_index``, ``sample`` and a hash of the
prompt's question; running the same command again reads the file, drops a line cut short by a kill, checks
that every line belongs to this prompt set, and generates only the samples that are missing, so a file ends
with exactly k samples per prompt, none twice. Sample j of prompt i is drawn from the seed ``seed + i * k + j``
(a local model: the row's own random stream, whatever else is in its batch; a server: the request's seed), so a
re-run draws what an uninterrupted run would have, at any batch size.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from aha.config import ConfigError
from aha.config.generate import TracesSection
from aha.data.readers import DataError, read_rows
from aha.data.records import collect_records
from aha.data.tasks import TASKS, make_task
from aha.eval.report import EvalProgress
from aha.rollout.base import SamplingParams
from aha.utils.io import JsonlFile, atomic_write_json
from aha.utils.signals import GracefulStop

SETTINGS = ("model", "api_base", "api_chat", "temperature", "top_p", "max_completion_length", "stop_strings",
            "prompt_template", "system_prompt", "question_template", "prefill", "use_chat_template", "seed", "k")
"""Settings that define the traces: a file made with other values is not resumed."""


class IncompleteError(RuntimeError):
    """Some samples could not be produced (the server kept failing); what was received is kept."""


def prompt_hash(question: str) -> str:
    return hashlib.sha1(question.encode("utf-8")).hexdigest()[:12]


def load_prompts(config: TracesSection) -> list[dict[str, Any]]:
    """The prompt rows (each with a ``question``): a dataset's rows, or a built-in task's training problems."""
    if config.prompts in TASKS:
        count = config.num_prompts or 1000
        task = make_task(config.prompts, {}, 100, config.seed)
        rows = [task.example(i) for i in range(count)]
    else:
        loaded = collect_records(read_rows(config.prompts, split="train"), config.prompts, dict(config.field_map),
                                 ("question",), config.on_error)
        rows = loaded.records
    return rows[: config.limit] if config.limit else rows


@dataclass
class TraceFile:
    """The traces of one prompt set, read back from disk and appended to."""

    path: Path
    prompts: list[dict[str, Any]]
    k: int
    rows: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    stopped: str | None = None
    """The signal that stopped generation before every sample was there, if one did."""

    def __post_init__(self):
        self.file = JsonlFile(self.path, fsync=False)
        self.file.drop_partial_line()
        hashes = [prompt_hash(p["question"]) for p in self.prompts]
        for number, row in self.file.lines():
            try:
                key = (int(row["prompt_index"]), int(row["sample"]))
                stored_hash = row["prompt_hash"]
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{self.path}:{number}: not a trace line (no prompt_index, sample or prompt_hash); "
                                "this file was not written by aha generate") from None
            if key[0] >= len(hashes) or stored_hash != hashes[key[0]]:
                raise DataError(f"{self.path}:{number}: a trace of another prompt set (prompt {key[0]} does not match "
                                "this prompt file's); use another --output, or the prompts it was made from")
            self.rows.setdefault(key, row)

    def missing(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(len(self.prompts)) for j in range(self.k) if (i, j) not in self.rows]

    def add(self, index: int, sample: int, generation) -> None:
        prompt = self.prompts[index]
        row = {**prompt, "prompt_index": index, "sample": sample, "prompt_hash": prompt_hash(prompt["question"]),
               "completion": generation.text, "finish_reason": generation.finish_reason,
               "tokens": getattr(generation, "completion_tokens", 0) or len(generation.token_ids)}
        reasoning = getattr(generation, "reasoning", None)
        if reasoning:
            row["reasoning"] = reasoning
        self.file.append(row)
        self.rows[(index, sample)] = row

    def ordered(self) -> list[dict[str, Any]]:
        return [self.rows[key] for key in sorted(self.rows)]


def check_settings(config: TracesSection, output: Path) -> None:
    """A traces file is resumed only with the settings that made it (stored beside it)."""
    path = output.with_name(output.name + ".settings.json")
    settings = json.loads(json.dumps({name: getattr(config, name) for name in SETTINGS}))
    if path.exists() and output.exists() and output.stat().st_size:
        stored = json.loads(path.read_text(encoding="utf-8"))
        changed = [f"{k}: {stored.get(k)!r} there, {v!r} now" for k, v in settings.items() if stored.get(k) != v]
        if changed:
            raise ConfigError(f"{output} holds traces made with other settings ({'; '.join(changed)}); use another "
                              "--output, or the same settings to resume")
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, settings)


def generate_traces(config: TracesSection, console: Console, output: str | Path | None = None) -> TraceFile:
    """Fill ``output`` (default ``config.output``) with k traces per prompt; returns the complete file.
    Raises IncompleteError, keeping every trace received, when some samples could not be produced."""
    output = Path(output or getattr(config, "output", ""))
    prompts = load_prompts(config)
    check_settings(config, output)
    traces = TraceFile(output, prompts, config.k)
    missing = traces.missing()
    if traces.rows:
        console.log(f"{output}: {len(traces.rows)} traces already there; {len(missing)} to go")
    if not missing:
        return traces
    from aha.eval.samplers import make_sampler

    sampler = make_sampler(config)
    params = SamplingParams(config.max_completion_length, config.temperature, config.top_p,
                            tuple(config.stop_strings))
    started = time.perf_counter()
    before = len(traces.rows)
    with GracefulStop(console, "the requests in flight") as stop, EvalProgress(console, len(missing)) as progress:
        if config.api_base:
            failed = _from_server(config, sampler, traces, missing, params, progress, stop)
        else:
            failed = _from_local_model(config, sampler, traces, missing, params, progress, stop)
    console.log(f"{output}: {len(traces.rows)} traces of {len(prompts)} prompts x {config.k} "
                f"({len(traces.rows) - before} new in {time.perf_counter() - started:.1f} s)")
    if stop.requested:
        console.log(f"stopped by {stop.signal_name}: {len(traces.rows)} of {len(prompts) * config.k} traces are in "
                    f"{output}; run the same command again to generate the rest")
        traces.stopped = stop.signal_name
        return traces
    if failed:
        raise IncompleteError(f"{len(failed)} of {len(missing)} samples failed ({failed[0]}); the "
                              f"{len(traces.rows)} traces received are in {output}; run the same command again to "
                              "retry the missing ones")
    return traces


def _from_local_model(config, sampler, traces: TraceFile, missing, params, progress, stop) -> list[str]:
    """Batches of the prompts that miss samples; each sample seeded by its prompt and number."""
    k, todo = config.k, set(missing)
    per_batch = max(1, config.generation_batch_size // k)
    pending = sorted({i for i, _ in missing})
    for start in range(0, len(pending), per_batch):
        if stop.requested:
            break
        indices = pending[start : start + per_batch]
        prompts = sampler.prompts([traces.prompts[i]["question"] for i in indices])
        generations = sampler.sample(prompts, k, params, [config.seed + i * k for i in indices])
        need = [(offset, i, j) for offset, i in enumerate(indices) for j in range(k) if (i, j) in todo]
        for offset, i, j in need:
            traces.add(i, j, generations[offset * k + j])
        progress.advance(len(need), "generate")
    return []


def _from_server(config, sampler, traces: TraceFile, missing, params, progress, stop) -> list[str]:
    """One request per missing sample, seeded by (seed, prompt, sample); each trace written as it arrives."""
    backend = sampler.backend
    prompts = sampler.prompts([p["question"] for p in traces.prompts])
    requests = []
    for i, j in missing:
        seed = [config.seed + i * config.k + j]
        if config.api_chat:
            requests += backend.chat_requests([prompts[i]], params, 1, seed)
        else:
            requests += backend.text_requests([prompts[i]], params, 1, seed)
    prefill = "" if config.api_chat else sampler.builder.prefill
    failed = []
    for index, outcome in backend.stream(requests, prefill, stop=lambda: stop.requested):
        i, j = missing[index]
        if isinstance(outcome, Exception):
            failed.append(f"prompt {i} sample {j}: {outcome}")
            continue
        traces.add(i, j, outcome)
        progress.advance(1, "generate")
    return failed
