"""Long runs stay flat: resident memory and open file descriptors over a long tiny-model GRPO run (with
checkpoints, rotation and held-out evaluations along the way), and the code sandbox's rate and leftovers over
thousands of executions with hostile programs mixed in.

    .venv/bin/python benchmarks/soak.py --steps 1000 --executions 10000 --out runs/soak

Prints a table for each part; the numbers go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

HOSTILE = {
    "fork bomb": "import os\nwhile True:\n    os.fork()",
    "memory bomb": "x = []\nwhile True:\n    x.append(' ' * 10**7)",
    "busy loop": "while True:\n    pass",
    "orphaned child": "import os, time\nif os.fork() == 0:\n    time.sleep(600)\nprint(input())",
    "file writer": ("import os\nfor i in range(50):\n    open(f'/tmp/soak-{os.getpid()}-{i}', 'w').write('x' * 10**5)\n"
                    "print(input())"),
    "huge output": "print('y' * 10**8)",
}
BENIGN = "print(int(input()) + 1)"


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def children() -> int:
    """Processes whose parent is this one (fork servers included)."""
    me, count = str(os.getpid()), 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                count += f.read().rsplit(")", 1)[1].split()[1] == me
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return count


def soak_training(steps: int, out: Path) -> list[tuple[int, float, int]]:
    from aha.config import GRPOConfig, load_config
    from aha.trainer.grpo import GRPOTrainer

    out.mkdir(parents=True, exist_ok=True)
    task = out / "task.jsonl"
    task.write_text("".join(f'{{"question": "{i} + {i} =", "answer": "{2 * i}"}}\n' for i in range(200)))
    config = load_config(GRPOConfig, overrides=[
        "model=tiny:qwen2", f"task={task}", "eval_size=8", "eval_steps=100", "save_steps=50", "keep_checkpoints=2",
        "prompt_template=plain", "prefill=", "prompts_per_step=4", "group_size=4", "max_completion_length=12",
        "temperature=1.0", "rewards={format: 0.5, accuracy: 1.0}", "learning_rate=1e-3", f"max_steps={steps}",
        "max_train_minutes=0", f"output_dir={out / 'run'}", "log_completions=4"])
    trainer = GRPOTrainer.from_config(config)
    samples: list[tuple[int, float, int]] = []
    original = trainer.train_step

    def train_step(step: int):
        result = original(step)
        if (step + 1) % 50 == 0 or step == 0:
            samples.append((step + 1, rss_mib(), open_fds()))
        return result

    trainer.train_step = train_step
    trainer.fit()
    return samples


def soak_sandbox(executions: int) -> tuple[list[tuple[int, float]], dict[str, int]]:
    from aha.rewards.sandbox import Job, Sandbox, SandboxLimits

    sandbox = Sandbox(SandboxLimits(wall_seconds=2.0), isolation="auto")
    hostile = list(HOSTILE.values())
    rates: list[tuple[int, float]] = []
    outcomes: dict[str, int] = {}
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    chunk = 1000
    done = 0
    while done < executions:
        jobs = []
        for i in range(done, min(done + chunk, executions)):
            program = hostile[(i // 50) % len(hostile)] if i % 50 == 0 else BENIGN  # one in 50 is hostile
            jobs.append(Job(program, "stdio", [str(i)]))
        start = time.perf_counter()
        results = sandbox.map(jobs)
        rates.append((done + len(jobs), len(jobs) / (time.perf_counter() - start)))
        for job, runs in zip(jobs, results):
            kind = "benign" if job.program == BENIGN else "hostile"
            right = runs[0].stdout.strip() == str(int(job.inputs[0]) + 1)
            label = f"{kind} {'ok' if runs[0].status == 'ok' and (kind == 'hostile' or right) else runs[0].status}"
            outcomes[label] = outcomes.get(label, 0) + 1
        done += len(jobs)
    sandbox.close()
    time.sleep(1.0)
    leftovers = sorted(set(os.listdir(tempfile.gettempdir())) - tmp_before)
    outcomes["leftover processes"] = children()
    outcomes["leftover temp entries"] = len([n for n in leftovers if "soak" in n or "aha" in n])
    return rates, outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--executions", type=int, default=10000)
    parser.add_argument("--out", default="runs/soak")
    parser.add_argument("--only", choices=["training", "sandbox"])
    args = parser.parse_args()
    out = Path(args.out)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}")
    if args.only != "sandbox":
        shutil.rmtree(out / "run", ignore_errors=True)
        start = time.perf_counter()
        samples = soak_training(args.steps, out)
        print(f"\ntraining: {args.steps} tiny-model GRPO steps in {(time.perf_counter() - start) / 60:.1f} min "
              f"(checkpoint every 50, 2 kept; held-out evaluation every 100)")
        print("| step | RSS MiB | open fds |\n|---|---|---|")
        for step, rss, fds in samples:
            print(f"| {step} | {rss:.0f} | {fds} |")
        at = {s: (r, f) for s, r, f in samples}
        if 100 in at and args.steps in at:
            print(f"growth from step 100 to {args.steps}: RSS {at[args.steps][0] - at[100][0]:+.0f} MiB, "
                  f"fds {at[args.steps][1] - at[100][1]:+d}; peak RSS "
                  f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.only != "training":
        start = time.perf_counter()
        rates, outcomes = soak_sandbox(args.executions)
        print(f"\nsandbox: {args.executions} executions in {(time.perf_counter() - start) / 60:.1f} min, one in 50 "
              f"hostile ({', '.join(HOSTILE)})")
        print("| executions | runs/s over the last 1000 |\n|---|---|")
        for count, rate in rates:
            print(f"| {count} | {rate:.0f} |")
        print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))


if __name__ == "__main__":
    main()
