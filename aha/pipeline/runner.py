"""``aha pipeline RECIPE.yaml``: run a recipe's stages in order, each in its own folder of the run directory,
recorded in ``pipeline.json``; the same command again resumes.

Per stage, in order:
    fingerprint = hash(kind, resolved config, fingerprints of the stages it reads, contents of the files it reads)
    done with the same fingerprint and its output there   -> skipped
    interrupted (running/failed) with the same fingerprint -> run again in place: trainers resume from their last
                                                             checkpoint, generate adds only missing traces
    new, or its fingerprint changed                        -> its folder cleared, run from the start (and every
                                                             stage after it that reads it changes fingerprint too)
    run: status running -> the stage's command -> done (output hash, key metric, tokens, FLOPs, time) or failed

``pipeline.json``: {"recipe", "output_dir", "stages": [{"name", "kind", "status", "config", "inputs", "output",
"fingerprint", "output_hash", "started", "ended", "seconds", "metric", "compute", "error"}], "summary"}.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from aha.config import ConfigError, config_to_dict
from aha.pipeline import cost
from aha.pipeline.recipe import INPUT_FIELDS, Pipeline, Stage, is_local_path
from aha.run import RunLayout
from aha.utils.io import atomic_write_json, file_sha256, remove_directory

MANIFEST = "pipeline.json"
STATUSES = ("pending", "running", "done", "failed")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
"""How ``started`` and ``ended`` are written (local time)."""
VOLATILE = ("resume", "threads")
"""Config fields that do not change what a stage makes (left out of its fingerprint)."""


def _hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()




def path_hash(path: Path) -> str | None:
    """Content hash of a file; of a folder, the names, sizes and modification times of its files (model
    weights are not re-read on every run); None when it does not exist."""
    if path.is_file():
        return file_sha256(path)
    if path.is_dir():
        listing = sorted(f"{p.relative_to(path)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                         for p in path.rglob("*") if p.is_file())
        return _hash_bytes("\n".join(listing).encode())
    return None


def output_hash(stage: Stage) -> str | None:
    """What a finished stage made: the file's hash, or a run directory's final checkpoint manifest, or the
    hash of its result files."""
    output = Path(stage.output)
    if output.is_file():
        return file_sha256(output)
    if stage.kind in ("sft", "grpo"):
        checkpoint = RunLayout(output).latest_checkpoint()
        if checkpoint is not None and (checkpoint / "manifest.json").is_file():
            return file_sha256(checkpoint / "manifest.json")
    for name in ("results.json", "summary.json"):
        if (output / name).is_file():
            return file_sha256(output / name)
    return path_hash(output)


def external_inputs(pipeline: Pipeline, stage: Stage) -> dict[str, str | None]:
    """Local files and folders a stage reads that no stage makes -> their content hash."""
    inputs: dict[str, str | None] = {}
    for key in INPUT_FIELDS:
        value = getattr(stage.config, key, None)
        if key == "inputs":
            texts = [item.get("data") for item in value or [] if isinstance(item, dict)]
        elif isinstance(value, list):
            texts = [v for v in value if isinstance(v, str)]
        else:
            texts = [value] if isinstance(value, str) else []
        for text in texts:
            if not text or not is_local_path(text) or any(text.startswith(str(s.dir)) for s in pipeline.stages):
                continue
            inputs[text] = path_hash(Path(text).expanduser())
    return inputs


def fingerprints(pipeline: Pipeline) -> dict[str, str]:
    found: dict[str, str] = {}
    for stage in pipeline.stages:  # in run order: what a stage reads is fingerprinted before it
        config = {k: v for k, v in config_to_dict(stage.config).items() if k not in VOLATILE}
        record = {"kind": stage.kind, "config": config, "reads": {d: found[d] for d in stage.depends},
                  "files": external_inputs(pipeline, stage)}
        found[stage.name] = _hash_bytes(json.dumps(record, sort_keys=True, default=str).encode())[:16]
    return found


def key_metric(stage: Stage, result: dict[str, Any]) -> str:
    """One line that says how a stage went."""
    if stage.kind in ("sft", "grpo"):
        before, after = result.get("before") or {}, result.get("after") or {}
        if after.get("strict_accuracy") is not None:
            start = f"{before['strict_accuracy']:.0%} -> " if before.get("strict_accuracy") is not None else ""
            return f"held-out strict {start}{after['strict_accuracy']:.0%}"
        metrics = RunLayout(stage.dir).root / "metrics.jsonl"
        last = _last(metrics)
        if "loss" in last:
            return f"loss {last['loss']:.4f} at step {last.get('step')}"
        return f"{result.get('steps', 0)} steps"
    if stage.kind == "generate":
        return f"{result.get('traces', 0)} traces"
    if stage.kind == "sample":
        return f"kept {result.get('kept', 0)} of {result.get('traces', 0)} traces"
    if stage.kind == "mix":
        return f"{result.get('rows', 0)} rows"
    if stage.kind == "distill":
        rows = result.get("students") or []
        return "; ".join(f"{r['student']} strict {r['strict_before']:.0%} -> {r['strict_after']:.0%} "
                         f"(teacher {r['teacher_strict']:.0%})" for r in rows)
    if stage.kind == "eval":
        parts = []
        for name, metrics in (result.get("benchmarks") or {}).items():
            value = metrics.get("pass@1")
            if value is not None:
                parts.append(f"{name} pass@1 {value:.1%}")
        return ", ".join(parts)
    return ""


def _last(path: Path) -> dict[str, Any]:
    last: dict[str, Any] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    last = json.loads(line)
                except json.JSONDecodeError:
                    pass
    return last


def run_stage(stage: Stage, console: Console) -> dict[str, Any]:
    """Run one stage's command; returns its result (with ``stopped`` when a signal stopped it)."""
    config = stage.config
    if stage.kind == "sft":
        from aha.trainer.sft import SFTTrainer

        return SFTTrainer.from_config(config).fit()
    if stage.kind == "grpo":
        from aha.trainer import rl_trainer

        return rl_trainer(config).fit()
    if stage.kind == "generate":
        from aha.pipeline.traces import generate_traces

        traces = generate_traces(config, console, output=config.output)
        return {"traces": len(traces.rows), **({"stopped": traces.stopped} if traces.stopped else {})}
    if stage.kind == "sample":
        from aha.pipeline.sample import rejection_sample

        return rejection_sample(config, console)
    if stage.kind == "mix":
        from aha.pipeline.mix import mix

        return mix(config, console)
    if stage.kind == "distill":
        from aha.pipeline.distill import distill

        return distill(config, console)
    from aha.eval.runner import evaluate

    return evaluate(config, console)


class Manifest:
    """pipeline.json: one record per stage, written atomically after every change."""

    def __init__(self, pipeline: Pipeline):
        self.path = pipeline.output_dir / MANIFEST
        self.pipeline = pipeline
        stored = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        self.previous = {s["name"]: s for s in stored.get("stages", [])}
        self.records = {s.name: {"name": s.name, "kind": s.kind, "status": "pending", "output": s.output,
                                 "inputs": list(s.depends)} for s in pipeline.stages}
        for name, record in self.records.items():
            if name in self.previous:
                record.update({k: v for k, v in self.previous[name].items() if k not in ("inputs",)})

    def save(self, summary: dict[str, Any] | None = None) -> None:
        self.pipeline.output_dir.mkdir(parents=True, exist_ok=True)
        data = {"recipe": self.pipeline.path, "output_dir": str(self.pipeline.output_dir),
                "stages": [self.records[s.name] for s in self.pipeline.stages]}
        if summary is not None:
            data["summary"] = summary
        atomic_write_json(self.path, data)


def plan(pipeline: Pipeline, manifest: Manifest, prints: dict[str, str], from_stage: str | None,
         until: str | None) -> dict[str, str]:
    """Stage -> skip | resume | run | rerun | after-until (not run this time)."""
    forced = set(pipeline.downstream(from_stage)) if from_stage else set()
    actions: dict[str, str] = {}
    stopped = False
    for stage in pipeline.stages:
        record = manifest.previous.get(stage.name, {})
        same = record.get("fingerprint") == prints[stage.name]
        if stopped:
            actions[stage.name] = "after-until"
        elif stage.name in forced:
            actions[stage.name] = "rerun" if Path(stage.dir).exists() else "run"
        elif same and record.get("status") == "done" and Path(stage.output).exists():
            actions[stage.name] = "skip"
        elif same and Path(stage.dir).exists():
            actions[stage.name] = "resume"
        else:
            actions[stage.name] = "rerun" if Path(stage.dir).exists() else "run"
        if until and stage.name == until:
            stopped = True
    return actions


def estimates(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    """Upper-bound tokens and FLOPs of every stage before it runs."""
    rows_of: dict[str, int] = {}
    model_of: dict[str, str] = {}
    found = {}
    for stage in pipeline.stages:
        config = stage.config
        model = getattr(config, "model", None)
        if isinstance(model, str) and model in model_of:  # an upstream run: the model it started from
            config = dataclasses.replace(config, model=model_of[model])
        found[stage.name] = cost.estimate(stage.kind, config, rows_of)
        if found[stage.name].get("rows") is not None:
            rows_of[stage.output] = found[stage.name]["rows"]
        if stage.kind in ("sft", "grpo") and isinstance(config.model, str):
            model_of[stage.output] = config.model
    return found


def _human(value: float | None, unit: str = "") -> str:
    if value is None:
        return "?"
    for scale, suffix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{suffix}{unit}"
    return f"{value:.0f}{unit}"


def dry_run(pipeline: Pipeline, actions: dict[str, str], console: Console, accelerator: str,
            devices: int) -> dict[str, Any]:
    """Print the plan and the estimated cost of the stages that would run; returns them."""
    found = estimates(pipeline)
    table = Table(title=f"plan of {pipeline.path} -> {pipeline.output_dir}")
    for column in ("stage", "kind", "action", "reads", "writes", "≤ generated", "≤ trained", "≤ FLOPs",
                   f"≈ {accelerator}-hours"):
        table.add_column(column)
    total_flops = total_hours = 0.0
    rows = []
    for stage in pipeline.stages:
        est = found[stage.name]
        runs = actions[stage.name] in ("run", "rerun", "resume")
        hours = cost.hours(est["flops"], accelerator, devices) if runs else 0.0
        if hours is not None and est.get("max_hours"):  # a time limit stops the stage sooner
            hours = min(hours, est["max_hours"])
        if runs and est["flops"]:
            total_flops += est["flops"]
            total_hours += hours or 0.0
        table.add_row(stage.name, stage.kind, actions[stage.name], ", ".join(stage.depends) or "-", stage.output,
                      _human(est["generated_tokens"]), _human(est["trained_tokens"]), _human(est["flops"]),
                      f"{hours:.3g}" if hours is not None else "?")
        rows.append({"name": stage.name, "kind": stage.kind, "action": actions[stage.name], "reads": stage.depends,
                     "output": stage.output, **{k: v for k, v in est.items() if k != "rows"}, "hours": hours})
    console.print(table)
    _, utilisation, what = cost.ACCELERATORS[accelerator]
    console.print(f"to run: ≤ {_human(total_flops)}FLOPs, ≈ {total_hours:.3g} hours on {devices}× {what} "
                  f"({utilisation:.0%} of peak assumed; upper bounds: every completion and row at full length, "
                  "training stages no longer than their max_train_minutes)")
    return {"stages": rows, "flops": total_flops, "hours": total_hours, "accelerator": accelerator,
            "devices": devices}


def run_pipeline(pipeline: Pipeline, console: Console, *, from_stage: str | None = None, until: str | None = None,
                 dry: bool = False, accelerator: str = "cpu", devices: int = 1) -> dict[str, Any]:
    """Run (or with ``dry`` only plan) the pipeline; returns the summary (or the plan)."""
    for name in (from_stage, until):
        if name:
            pipeline.stage(name)
    if accelerator not in cost.ACCELERATORS:
        raise ConfigError(f"unknown accelerator {accelerator!r}; known: {', '.join(cost.ACCELERATORS)}")
    manifest = Manifest(pipeline)
    prints = fingerprints(pipeline)
    actions = plan(pipeline, manifest, prints, from_stage, until)
    if dry:
        return dry_run(pipeline, actions, console, accelerator, devices)
    for stage in pipeline.stages:
        action = actions[stage.name]
        record = manifest.records[stage.name]
        if action == "after-until":
            break
        if action == "skip":
            console.log(f"stage {stage.name} ({stage.kind}): done, skipped")
            continue
        if action == "rerun":
            console.log(f"stage {stage.name} ({stage.kind}): its config or inputs changed; starting it again")
            remove_directory(stage.dir)
        elif action == "resume":
            console.log(f"stage {stage.name} ({stage.kind}): resuming")
            killed = killed_attempt_seconds(record, stage.dir)
            if killed:
                record["seconds"] = round(float(record.get("seconds") or 0.0) + killed, 1)
                console.log(f"stage {stage.name}: its last attempt was killed; {killed:.0f} s of it (to its last "
                            "write) counted in its time")
        else:
            console.log(f"stage {stage.name} ({stage.kind}): starting")
        stage.dir.mkdir(parents=True, exist_ok=True)
        record.update(status="running", fingerprint=prints[stage.name], config=config_to_dict(stage.config),
                      inputs={d: pipeline.stage(d).output for d in stage.depends}, started=_now(), ended=None,
                      error=None, stopped=None)
        record.setdefault("seconds", 0.0)
        if action != "resume":
            record["seconds"] = 0.0
        manifest.save()
        started = time.perf_counter()
        try:
            result = run_stage(stage, console) or {}
        except BaseException as err:
            record["seconds"] = round(record["seconds"] + time.perf_counter() - started, 1)
            interrupted = isinstance(err, KeyboardInterrupt)
            record.update(status="running" if interrupted else "failed",
                          error=None if interrupted else f"{type(err).__name__}: {err}",
                          stopped="interrupted" if interrupted else None)
            manifest.save()
            raise
        record["seconds"] = round(record["seconds"] + time.perf_counter() - started, 1)
        if result.get("stopped"):
            record.update(stopped=str(result["stopped"]))
            manifest.save()
            console.log(f"stage {stage.name} stopped ({result['stopped']}); run the same command to resume")
            return {"stopped": stage.name}
        record.update(status="done", ended=_now(), output_hash=output_hash(stage), metric=key_metric(stage, result),
                      compute=cost.measured(stage.kind, stage.config, stage.dir))
        manifest.save()
        console.log(f"stage {stage.name} ({stage.kind}) done in {record['seconds']:.0f} s: {record['metric']}")
    summary = summarise(pipeline, manifest, console)
    manifest.save(summary)
    return summary


def killed_attempt_seconds(record: dict[str, Any], stage_dir: Path) -> float:
    """The time of a stage's last attempt when it was killed (SIGKILL, power loss: still ``running``, with no
    stop or error recorded, so its time never reached ``seconds``), from its start to the newest file it wrote;
    0 for an attempt that ended any other way."""
    if record.get("status") != "running" or record.get("stopped") or record.get("error") or not record.get("started"):
        return 0.0
    written = [p.stat().st_mtime for p in stage_dir.rglob("*") if p.is_file()] if stage_dir.is_dir() else []
    if not written:
        return 0.0
    started = time.mktime(time.strptime(record["started"], _TIME_FORMAT))
    return max(0.0, max(written) - started)


def _now() -> str:
    return time.strftime(_TIME_FORMAT)


def summarise(pipeline: Pipeline, manifest: Manifest, console: Console) -> dict[str, Any]:
    """Per stage its status, key metric, time, tokens and FLOPs; the totals."""
    table = Table(title=f"pipeline {pipeline.output_dir}")
    for column in ("stage", "kind", "status", "result", "time", "generated", "trained", "FLOPs"):
        table.add_column(column)
    totals = {"seconds": 0.0, "generated_tokens": 0, "trained_tokens": 0, "flops": 0.0}
    stages = []
    for stage in pipeline.stages:
        record = manifest.records[stage.name]
        compute = record.get("compute") or {}
        seconds = float(record.get("seconds") or 0.0)
        totals["seconds"] += seconds
        for key in ("generated_tokens", "trained_tokens"):
            totals[key] += int(compute.get(key) or 0)
        totals["flops"] += float(compute.get("flops") or 0.0)
        table.add_row(stage.name, stage.kind, record["status"], record.get("metric") or "",
                      f"{seconds / 60:.1f} min", _human(compute.get("generated_tokens")),
                      _human(compute.get("trained_tokens")), _human(compute.get("flops")))
        stages.append({"name": stage.name, "status": record["status"], "metric": record.get("metric"),
                       "seconds": seconds, **compute})
    table.add_row("total", "", "", "", f"{totals['seconds'] / 60:.1f} min", _human(totals["generated_tokens"]),
                  _human(totals["trained_tokens"]), _human(totals["flops"]))
    console.print(table)
    return {"stages": stages, "total": totals}
