"""Writes ``chain-sum-cold-start.jsonl``: a few hundred readable worked solutions of chain_sum training problems,
the CPU recipes' cold-start SFT data (R1 starts its RL from a few thousand such traces). Each row is a
``prompt``/``completion`` pair whose completion works the sum left to right inside ``<think>…</think>`` and
states the result in ``<answer>…</answer>``; the problems are the task's training problems (never its held-out
set).

    .venv/bin/python recipes/data/make_cold_start.py [--rows 300] [--out recipes/data/chain-sum-cold-start.jsonl]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from aha.data.tasks import make_task

TERM = re.compile(r"([+-])\s*(\d+)")


def worked(question: str) -> tuple[str, int]:
    """The left-to-right working of ``a ± b ± c =`` and its result."""
    expression = question.rsplit(":", 1)[-1].replace("=", "").strip()
    first, rest = re.match(r"(-?\d+)(.*)", expression).groups()
    total = int(first)
    lines = [f"Start with {total}."]
    for sign, value in TERM.findall(rest):
        before, total = total, total + int(value) if sign == "+" else total - int(value)
        lines.append(f"{before} {sign} {value} = {total}.")
    lines.append(f"Check: {expression} = {total}.")
    return " ".join(lines), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--out", default=str(Path(__file__).with_name("chain-sum-cold-start.jsonl")))
    args = parser.parse_args()
    task = make_task("chain_sum", {}, 100, 0)
    rows, seen = [], set()
    index = 0
    while len(rows) < args.rows:
        example = task.example(index)
        index += 1
        if example["question"] in seen:
            continue
        seen.add(example["question"])
        reasoning, total = worked(example["question"])
        if str(total) != str(example["answer"]).strip():
            raise SystemExit(f"worked result {total} != gold {example['answer']} for {example['question']!r}")
        completion = f"<think> {reasoning} </think>\n<answer> {total} </answer>"
        rows.append({"prompt": example["question"], "completion": completion, "answer": example["answer"]})
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
