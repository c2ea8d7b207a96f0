"""math-verify throughput through the ``accuracy`` reward (worker process, hard time-outs).

    nice -n 19 .venv/bin/python benchmarks/bench_math_verify.py [--rows 500]

Grades the real gold answers of ../shared/data/math500.jsonl (LaTeX: every pair goes to math-verify) and
gsm8k.jsonl (plain numbers: most are decided without it), each against itself and against a wrong answer.
Prints pairs/s per data set and worker count.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from aha.rewards import get_reward, normalise_gold
from aha.rewards._math_worker import math_equal
from aha.rewards.math import extract_answer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pairs(name: str, key: str, rows: int) -> tuple[list[str], list[str]]:
    lines = (DATA / f"{name}.jsonl").read_text().splitlines()[:rows]
    golds = [normalise_gold(json.loads(line)[key]) for line in lines]
    completions = [f"<answer>{g}</answer>" for g in golds] + [f"<answer>{g}+1</answer>" for g in golds]
    return completions, golds + golds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500)
    args = parser.parse_args()
    for name in ("math500", "gsm8k"):  # baseline: math-verify called directly, in this process's main thread
        completions, answers = pairs(name, "answer", args.rows)
        start = time.perf_counter()
        equal = [math_equal(extract_answer(c), a) for c, a in zip(completions, answers)]
        elapsed = time.perf_counter() - start
        print(f"{name:8s} in-process {len(equal)} pairs in {elapsed:6.2f} s = {len(equal) / elapsed:7.1f} pairs/s")
    for workers in (1, 2):
        reward = get_reward("accuracy", workers=workers)
        reward(["<answer>\\frac{1}{2}</answer>"] * 2 * workers, answer=["0.5"] * 2 * workers)  # start the workers
        for name in ("math500", "gsm8k"):
            completions, answers = pairs(name, "answer", args.rows)
            start = time.perf_counter()
            scores = reward(completions, answer=answers)
            elapsed = time.perf_counter() - start
            half = len(scores) // 2
            print(f"{name:8s} workers={workers} {len(scores)} pairs in {elapsed:6.2f} s = "
                  f"{len(scores) / elapsed:7.1f} pairs/s  (right {sum(s == 1.0 for s in scores[:half])}/{half}, "
                  f"wrong {sum(s == 0.0 for s in scores[half:])}/{half})")


if __name__ == "__main__":
    main()
