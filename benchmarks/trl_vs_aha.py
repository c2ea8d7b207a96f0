"""aha's R1-Zero run against TRL's GRPOTrainer, side by side, on this machine.

Both train SmolLM2-135M-Instruct on reasoning-gym's chain_sum with two 1-digit terms, from the same prompt
(the R1-Zero instruction as the system message, the question as the user message, the assistant turn
opened with "<think>"), for the same wall budget, and both are then graded by the same greedy evaluator on
the same fixed held-out problems (never trained on): strict accuracy (right answer inside
<think>…</think><answer>…</answer>) and lenient accuracy (right final answer anywhere).

TRL runs with the best settings measured for it on this task: fp32, 8 prompts x 4 samples per step,
lr 1e-5 constant, completions <= 32 tokens, beta = 0, temperature 1.0, reward = reasoning-gym's
correctness score (partial credit) + 0.1 format bonus. aha runs its default recipe on the same task.

    .venv/bin/pip install "trl==1.16.0"          # or: pip install -e ".[bench]"
    .venv/bin/python benchmarks/trl_vs_aha.py --minutes 16 --out runs/bench-trl

Each trainer runs in its own process, one after the other; the script prints a Markdown table and writes
results.json in --out. ``--bf16``: both with bfloat16 products (aha's ``matmul_precision=medium``, TRL's
``bf16=True``), on a CPU that has bfloat16 dot products.
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

TASK_OPTIONS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


def run_aha(args, out: Path) -> dict:
    run_dir = out / "aha"
    cmd = [sys.executable, "-m", "aha", "train", f"output_dir={run_dir}", f"max_train_minutes={args.minutes}",
           f"eval_size={args.eval_size}", f"task_options={json.dumps(TASK_OPTIONS)}", f"seed={args.seed}",
           "max_completion_length=32", "save_steps=0", *(["matmul_precision=medium"] if args.bf16 else [])]
    start = time.time()
    subprocess.run(cmd, check=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"wall_s": time.time() - start, "steps": summary["steps"], "train_s": summary["train_seconds"],
            "peak_rss_gb": summary.get("peak_rss_gb"), "before": summary["before"], "after": summary["after"],
            "completions": sum(m["sampled_completions"] for m in metrics),
            "completion_tokens": sum(m["generated_tokens"] for m in metrics)}


def run_trl(args, out: Path) -> dict:
    start = time.time()
    subprocess.run([sys.executable, __file__, "--trl-child", "--minutes", str(args.minutes), "--eval-size",
                    str(args.eval_size), "--seed", str(args.seed), "--out", str(out),
                    *(["--bf16"] if args.bf16 else [])], check=True)
    result = json.loads((out / "trl" / "result.json").read_text())
    return {**result, "wall_s": time.time() - start}


def trl_child(args, out: Path) -> None:
    """Runs in its own process: TRL training for the budget, then the shared evaluator."""
    import reasoning_gym.utils as rg
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from aha.data.prompts import PromptBuilder
    from aha.data.tasks import make_task
    from aha.eval.heldout import evaluate_heldout
    from aha.models import load_model
    from aha.rewards import follows_format
    from aha.rollout import HFBackend

    model, tokenizer = load_model("smollm2-135m-instruct")
    builder = PromptBuilder(tokenizer, "r1-zero", prefill="<think>")
    task = make_task("chain_sum", TASK_OPTIONS, args.eval_size, args.seed)
    stop = ("</answer>",)  # what aha's evaluation stops at: the same grading for both
    before = evaluate_heldout(HFBackend(model, tokenizer), builder, task.eval_examples(), 32, stop).metrics()
    rows = [{"prompt": builder.build(ex["question"]), "answer": ex["answer"]}
            for ex in (task.example(i) for i in range(4000))]

    def correctness(completions, answer, **_):
        return [rg.compute_decimal_reward(rg.extract_answer("<think>" + c), a) for c, a in zip(completions, answer)]

    def format_bonus(completions, **_):
        return [0.1 if follows_format("<think>" + c) else 0.0 for c in completions]

    class Budget(TrainerCallback):
        def __init__(self):
            self.start = time.time()

        def on_step_end(self, targs, state, control, **kw):
            if time.time() - self.start > 60 * args.minutes:
                control.should_training_stop = True

    config = GRPOConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=32, num_generations=4, max_completion_length=32,
        learning_rate=1e-5, lr_scheduler_type="constant", beta=0.0, temperature=1.0, use_cpu=True, bf16=args.bf16,
        logging_steps=1, save_strategy="no", report_to="none", max_steps=100_000, seed=args.seed,
    )
    budget = Budget()
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=[correctness, format_bonus],
                          args=config, train_dataset=Dataset.from_list(rows), callbacks=[budget])
    trainer.train()
    train_s = time.time() - budget.start
    after = evaluate_heldout(HFBackend(trainer.model, tokenizer), builder, task.eval_examples(), 32, stop).metrics()
    trainer.save_model(str(out / "trl" / "final"))
    steps = [entry for entry in trainer.state.log_history if "completions/mean_length" in entry]
    per_step = config.per_device_train_batch_size  # completions sampled per step (prompts x num_generations)
    result = {"steps": trainer.state.global_step, "train_s": train_s, "before": before, "after": after,
              "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
              "completions": per_step * len(steps),
              "completion_tokens": round(sum(e["completions/mean_length"] * per_step for e in steps)),
              "log": trainer.state.log_history}
    (out / "trl" / "result.json").write_text(json.dumps(result, indent=2))


def table(results: dict) -> str:
    """The side-by-side table; completion tokens/s of training (tokens sampled and trained on, per second of
    the training budget) against the last trainer's (TRL's)."""
    lines = ["| trainer | steps | s/step | completions | completion tokens | tokens/s of training | ratio | "
             "train min | wall min | peak RSS GB | strict before → after | lenient before → after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rates = {name: r.get("completion_tokens", 0) / max(r["train_s"], 1e-9) for name, r in results.items()}
    peer = list(rates.values())[-1]
    for name, r in results.items():
        b, a = r["before"], r["after"]
        lines.append(f"| {name} | {r['steps']} | {r['train_s'] / max(r['steps'], 1):.1f} | {r.get('completions', 0)} | "
                     f"{r.get('completion_tokens', 0)} | {rates[name]:.1f} | {rates[name] / max(peer, 1e-9):.1f}× | "
                     f"{r['train_s'] / 60:.1f} | {r['wall_s'] / 60:.1f} | "
                     f"{r['peak_rss_gb'] or float('nan'):.1f} | {100 * b['strict_accuracy']:.0f}% → "
                     f"{100 * a['strict_accuracy']:.0f}% | {100 * b['lenient_accuracy']:.0f}% → "
                     f"{100 * a['lenient_accuracy']:.0f}% |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=16.0, help="training wall budget of each trainer")
    parser.add_argument("--eval-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench-trl")
    parser.add_argument("--only", choices=["aha", "trl"], help="run one side only")
    parser.add_argument("--bf16", action="store_true",
                        help="bfloat16 products on both sides: aha's matmul_precision=medium, TRL's bf16=True "
                             "(torch.autocast); for CPUs with bfloat16 dot products (AVX512-BF16, AMX)")
    parser.add_argument("--trl-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out)
    if args.trl_child:
        trl_child(args, out)
        return
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if args.only and results_path.exists() else {}
    if args.only != "trl":
        results["aha (default recipe)"] = run_aha(args, out)
    if args.only != "aha":
        results["TRL 1.16 GRPOTrainer"] = run_trl(args, out)
    results_path.write_text(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "log"}
                                          for k, v in results.items()}, indent=2))
    print(f"\n{os.uname().machine}, {os.cpu_count()} cores, budget {args.minutes} min of training each\n")
    print(table(results))


if __name__ == "__main__":
    main()
