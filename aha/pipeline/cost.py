"""Compute accounting for pipeline stages: tokens generated and trained on, FLOPs (6·N per trained token,
2·N per generated token, N the model's parameters) and wall time, measured after a stage runs and estimated
before it (``--dry-run``), with accelerator-hours at an assumed utilisation.

Estimates are upper bounds: every completion is counted at its full length (``max_completion_length``) and
every SFT row at ``max_length``. Generation on an accelerator is usually memory-bound, so its real time is
longer than FLOPs alone say; the hours are for pricing a run, not a promise.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from aha.utils.io import JsonlFile

ACCELERATORS: dict[str, tuple[float, float, str]] = {
    "h200": (989e12, 0.35, "NVIDIA H200, dense bf16"),
    "h100": (989e12, 0.35, "NVIDIA H100 SXM, dense bf16"),
    "a100": (312e12, 0.35, "NVIDIA A100, dense bf16"),
    "l40s": (362e12, 0.30, "NVIDIA L40S, dense bf16"),
    "rtx4090": (165e12, 0.30, "GeForce RTX 4090, dense bf16"),
    "cpu": (0.15e12, 1.0, "2-core AVX2 CPU, fp32 (its measured aha sft throughput as peak)"),
}
"""name -> (peak FLOP/s, assumed utilisation, what it is)."""
PROMPT_TOKENS = 256
"""Prompt length assumed by estimates when a stage does not cap it."""
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([MB])\b", re.IGNORECASE)
_PARAMS: dict[str, int | None] = {}


def count_parameters(name: str) -> int | None:
    """The parameters of a model (alias, folder, run directory, tiny:arch), counted from its config without
    loading weights; for a hub id that cannot be read here, the size in its name (``Qwen2.5-1.5B``); else None."""
    if name in _PARAMS:
        return _PARAMS[name]
    found = None
    try:
        found = _count(name)
    except Exception:  # noqa: BLE001 - an unreadable model leaves the estimate without N
        found = None
    if found is None:
        match = _SIZE.search(name.rsplit("/", 1)[-1])
        if match:
            found = int(float(match.group(1)) * (1e6 if match.group(2).upper() == "M" else 1e9))
    _PARAMS[name] = found
    return found


def _count(name: str) -> int | None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from aha.models import load_model, model_source_problem, resolve_model_path
    from aha.run import resolve_model_source

    if name.startswith("tiny:"):
        model, _ = load_model(name)
        return sum(p.numel() for p in model.parameters())
    source = resolve_model_source(name) if Path(name).is_dir() else name
    if model_source_problem(source) is not None:
        return None
    path = resolve_model_path(source)
    config = AutoConfig.from_pretrained(path, local_files_only=not Path(path).is_dir())  # no network for an id
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def flops(parameters: int | None, generated: float, trained: float) -> float | None:
    if not generated and not trained:
        return 0.0
    if parameters is None:
        return None
    return 2.0 * parameters * generated + 6.0 * parameters * trained


def hours(total_flops: float | None, accelerator: str, devices: int = 1) -> float | None:
    if total_flops is None:
        return None
    peak, utilisation, _ = ACCELERATORS[accelerator]
    return total_flops / (peak * utilisation * devices) / 3600


def _sum(path: Path, key: str) -> float:
    if not path.is_file():
        return 0.0
    return float(sum(row.get(key, 0) or 0 for _, row in JsonlFile(path).lines()))


def run_tokens(run_dir: Path) -> tuple[float, float]:
    """(generated, trained) tokens of a training run directory, from its metrics.jsonl."""
    metrics = run_dir / "metrics.jsonl"
    generated = _sum(metrics, "generated_tokens")
    trained = _sum(metrics, "train_tokens") or _sum(metrics, "tokens")
    return generated, trained


def measured(kind: str, config: Any, stage_dir: Path) -> dict[str, Any]:
    """Tokens and FLOPs a finished stage used, read from what it wrote."""
    from aha.pipeline.distill import slug

    generated = trained = 0.0
    parameters = None
    if kind in ("sft", "grpo"):
        generated, trained = run_tokens(stage_dir)
        parameters = count_parameters(config.model)
    elif kind in ("generate", "sample"):
        if kind == "generate" or config.prompts:
            traces = Path(config.output if kind == "generate" else config.traces_path)
            generated = _sum(traces, "tokens")
        parameters = count_parameters(config.model) if generated else None
    elif kind == "eval":
        generated = sum(_sum(folder / "samples.jsonl", "tokens") for folder in [stage_dir, *stage_dir.iterdir()]
                        if folder.is_dir())
        parameters = count_parameters(config.model)
    elif kind == "distill":
        teacher = count_parameters(config.model) if not config.api_base else None
        generated = 0.0 if config.traces else _sum(stage_dir / "traces.jsonl", "tokens")
        total = flops(teacher, generated, 0.0) if teacher else None
        for run in sorted((stage_dir / "students").glob("*")):
            gen, tr = run_tokens(run)
            trained += tr
            generated += gen
            student = next((s for s in config.students if slug(s) == run.name), None)
            n = count_parameters(student) if student else None
            if total is not None and n is not None:
                total += flops(n, gen, tr) or 0.0
        return {"generated_tokens": int(generated), "trained_tokens": int(trained), "flops": total}
    return {"generated_tokens": int(generated), "trained_tokens": int(trained),
            "flops": flops(parameters, generated, trained), "parameters": parameters}


def _rows(path: str) -> int | None:
    file = Path(path)
    if file.is_file() and file.suffix == ".jsonl":
        with file.open("rb") as f:
            return sum(1 for line in f if line.strip())
    return None


def estimate(kind: str, config: Any, rows_of: dict[str, int]) -> dict[str, Any]:
    """Upper-bound tokens and FLOPs of a stage before it runs; ``rows_of`` maps upstream outputs to their
    estimated row counts (for SFT data that does not exist yet). Returns also ``rows``, the rows it makes."""
    generated = trained = 0.0
    rows = None
    model = getattr(config, "model", None)
    if kind == "grpo":
        completions = config.max_steps * config.prompts_per_step * config.group_size
        if config.max_completions:
            completions = min(completions, config.max_completions)
        prompt = config.max_prompt_length or PROMPT_TOKENS
        evals = (2 + (config.max_steps // config.eval_steps if config.eval_steps else 0)) * config.eval_size
        generated = (completions + evals) * config.max_completion_length
        trained = completions * (prompt + config.max_completion_length) * config.num_iterations
    elif kind == "sft":
        data_rows = rows_of.get(config.dataset) or _rows(config.dataset) or 0
        if config.max_steps:
            trained = config.max_steps * config.batch_size * config.max_length
        else:
            trained = config.num_epochs * data_rows * config.max_length
    elif kind in ("generate", "sample", "distill"):
        prompts = _prompt_count(config)
        if kind == "generate" or (kind == "sample" and config.prompts) or (kind == "distill" and not config.traces):
            generated = prompts * config.k * config.max_completion_length
        rows = prompts * (config.max_per_prompt or config.k if kind != "generate" else config.k)
        if kind == "distill":
            evals = (1 + 2 * len(config.students)) * config.eval_size * config.max_completion_length
            generated += evals
            sft = config.sft
            length = sft.get("max_length", 1024)
            per_student = (sft.get("max_steps") or 0) * sft.get("batch_size", 16) * length \
                or sft.get("num_epochs", 1) * rows * length
            trained = per_student * len(config.students)
    elif kind == "mix":
        counts = []
        for item in config.inputs:
            available = rows_of.get(item["data"]) or _rows(item["data"]) or 0
            count = round(available * float(item.get("weight", 1.0)))
            counts.append(min(count, item["max_rows"]) if item.get("max_rows") else count)
        rows = min(sum(counts), config.max_rows) if config.max_rows else sum(counts)
    elif kind == "eval":
        problems = config.limit or 100
        generated = len(config.benchmarks) * problems * config.k * config.max_completion_length
    parameters = count_parameters(model) if model and (generated or trained) and not getattr(config, "api_base", None) \
        else None
    minutes = getattr(config, "max_train_minutes", 0.0) if kind in ("sft", "grpo") else 0.0
    return {"generated_tokens": int(generated), "trained_tokens": int(trained), "rows": rows,
            "flops": flops(parameters, generated, trained), "parameters": parameters,
            "max_hours": minutes / 60 if minutes else None}


def _prompt_count(config: Any) -> int:
    if config.traces:
        return _rows(config.traces) or 0
    count = config.num_prompts or (_rows(config.prompts) if config.prompts else None) or 1000
    return min(count, config.limit) if config.limit else count
