"""What long completions cost the policy's update, and what gradient checkpointing saves: one GRPO optimisation
pass (``GRPOTrainer.optimise``: the micro-batches' forward-backward and the optimiser step) on a batch of
completions of a fixed length, per setting, each in a process of its own for its own peak RSS.

    .venv/bin/python benchmarks/long_completions.py --lengths 256,1024 --variant "" \\
        --variant "gradient_checkpointing=true" --variant "MALLOC_ARENA_MAX=1" --repeats 2

A setting in capitals is an environment variable of its process (``MALLOC_ARENA_MAX=1``); ``CHECKOUT=DIR`` runs
the code of another checkout (``git worktree add DIR COMMIT``), for a side-by-side comparison.

The batch: the default recipe's first step's prompts (8 prompts, 8 rows each), every completion ``length`` random
tokens, advantages alternating +1 / -1 so every row trains. Prints a Markdown table (the update's time, the best
of its timed passes after a first untimed one, and the process's peak RSS) and writes results.json in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def one(variant: str, length: int, passes: int) -> dict:
    """Build the default trainer with ``variant``'s overrides and time ``passes`` updates (in this process)."""
    import torch

    from aha.config import GRPOConfig, load_config
    from aha.trainer.grpo import GRPOTrainer
    from aha.types import build_train_batch

    out = Path(os.environ["AHA_BENCH_OUT"])
    settings = [o for o in variant.split() if not o.split("=", 1)[0].isupper()]  # capitals: the environment's
    overrides = [f"output_dir={out}", "eval_size=0", "save_steps=0", *settings]
    trainer = GRPOTrainer.from_config(load_config(GRPOConfig, overrides=overrides))
    c = trainer.config
    prompt_ids, _ = trainer._tokenize_prompts([e["question"] for e in trainer.task.batch(0, c.prompts_per_step)])
    g = torch.Generator().manual_seed(0)
    vocab = trainer.policy.tokenizer.vocab_size
    rows = [p for p in prompt_ids for _ in range(c.group_size)]
    completions = [torch.randint(100, vocab, (length,), generator=g).tolist() for _ in rows]
    advantages = torch.tensor([1.0, -1.0] * (len(rows) // 2))
    batch = build_train_batch(rows, completions, advantages, trainer.policy.tokenizer.pad_token_id, c.group_size)
    seconds = []
    for _ in range(passes + 1):
        start = time.perf_counter()
        trainer.optimise(batch)
        seconds.append(time.perf_counter() - start)
    return {"variant": variant, "length": length, "seconds": min(seconds[1:]),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "prompt_tokens": sum(len(p) for p in rows), "completion_tokens": length * len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="256,1024", help="completion lengths, comma-separated")
    parser.add_argument("--variant", action="append", default=[], help="key=value overrides of the default run")
    parser.add_argument("--passes", type=int, default=1, help="timed updates per process (after an untimed one)")
    parser.add_argument("--repeats", type=int, default=1, help="processes per variant and length, alternating")
    parser.add_argument("--out", default="runs/bench-long")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: VARIANT LENGTH, in a child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.passes)))
        return
    variants = args.variant or [""]
    out = Path(args.out)
    results = []
    for length in [int(n) for n in args.lengths.split(",")]:
        for repeat in range(args.repeats):
            for i, variant in enumerate(variants):
                run_dir = out / f"run-{length}-{i}-{repeat}"
                env = {**os.environ, "AHA_BENCH_OUT": str(run_dir.resolve())}
                env.update(o.split("=", 1) for o in variant.split() if o.split("=", 1)[0].isupper())
                checkout = env.pop("CHECKOUT", None)  # another checkout's code (its own copy of this script)
                if checkout:
                    env["PYTHONPATH"] = os.pathsep.join([checkout, *filter(None, [env.get("PYTHONPATH")])])
                script = Path(checkout, "benchmarks", Path(__file__).name) if checkout else Path(__file__)
                done = subprocess.run([sys.executable, str(script), "--passes", str(args.passes), "--one", variant,
                                       str(length)], env=env, check=True, capture_output=True, text=True,
                                      cwd=checkout)
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"{length} tokens, {variant or '(default)'}: {results[-1]['seconds']:.1f} s, "
                      f"{results[-1]['peak_rss_gib']:.2f} GiB", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print("| completion tokens | setting | update s (best) | peak RSS GiB |")
    print("|---|---|---|---|")
    for length in sorted({r["length"] for r in results}):
        for variant in variants:
            mine = [r for r in results if r["length"] == length and r["variant"] == variant]
            times = sorted(r["seconds"] for r in mine)
            peaks = sorted(r["peak_rss_gib"] for r in mine)
            print(f"| {length} x {len(mine) and mine[0]['completion_tokens'] // length} | {variant or 'default'} | "
                  f"{times[0]:.1f}–{times[-1]:.1f} | {peaks[0]:.2f}–{peaks[-1]:.2f} |")


if __name__ == "__main__":
    main()
