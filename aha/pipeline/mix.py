"""The ``mix`` stage: merge SFT datasets into one JSONL file, each input taken ``weight`` times (whole copies,
then a seeded random part for the fraction), capped per input and in total, shuffled. Each row keeps its
fields (renamed by the input's ``field_map``) and gains ``source``, the input it came from."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from rich.console import Console

from aha.config.pipeline import MixConfig
from aha.data.readers import DataError, read_rows
from aha.utils.io import atomic_write_json, atomic_write_text, jsonl_text


def read_input(source: str, field_map: dict[str, str]) -> list[dict[str, Any]]:
    """Every row of ``source``, fields renamed (``field_map``: new name -> the source's name)."""
    rows = []
    for raw in read_rows(source, split="train"):
        if raw.row is None:
            raise DataError(f"{raw.where}: {raw.problem}")
        row = dict(raw.row)
        for new, old in field_map.items():
            if old not in row:
                raise DataError(f"{raw.where}: no field {old!r} (field_map {new}: {old}); the row has "
                                f"{', '.join(sorted(row)) or 'no fields'}")
            row[new] = row.pop(old)
        rows.append(row)
    return rows


def weighted(rows: list[dict[str, Any]], weight: float, rng: random.Random) -> list[dict[str, Any]]:
    """``weight`` copies of ``rows``: the whole list ``int(weight)`` times, then a random part for the rest."""
    whole, part = divmod(weight, 1.0)
    taken = rows * int(whole)
    extra = round(part * len(rows))
    return taken + rng.sample(rows, extra)


def cut(counts: list[int], cap: int) -> list[int]:
    """Counts scaled down in proportion so that they sum to at most ``cap`` (0: no cap)."""
    total = sum(counts)
    if not cap or total <= cap:
        return counts
    scaled = [count * cap // total for count in counts]
    order = sorted(range(len(counts)), key=lambda i: (counts[i] * cap / total - scaled[i]), reverse=True)
    for i in order[: cap - sum(scaled)]:
        scaled[i] += 1
    return scaled


def mix(config: MixConfig, console: Console) -> dict[str, Any]:
    """Write the merged rows to ``config.output`` and a report beside it; returns the report."""
    rng = random.Random(config.seed)
    parts = []
    for i, item in enumerate(config.inputs):
        rows = read_input(item["data"], item.get("field_map", {}))
        if not rows:
            raise DataError(f"{item['data']}: no rows (inputs[{i}] of the mix)")
        taken = weighted(rows, float(item.get("weight", 1.0)), rng)
        if item.get("max_rows"):
            taken = rng.sample(taken, min(len(taken), item["max_rows"]))
        parts.append((item["data"], len(rows), taken))
    counts = cut([len(taken) for _, _, taken in parts], config.max_rows)
    merged = []
    report_inputs = []
    for (source, available, taken), count in zip(parts, counts):
        chosen = taken if count == len(taken) else rng.sample(taken, count)
        merged.extend({**row, "source": source} for row in chosen)
        report_inputs.append({"data": source, "rows": available, "taken": count})
    rng.shuffle(merged)
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, jsonl_text(merged))
    report = {"output": str(output), "rows": len(merged), "inputs": report_inputs}
    atomic_write_json(output.with_suffix(".report.json"), report)
    console.log(f"mixed {len(merged)} rows into {output}: "
                + ", ".join(f"{r['taken']} of {r['data']}" for r in report_inputs))
    return report
