"""The GPU checks of the scale-out work, as one script for a machine with a CUDA GPU: rollout speed of the
transformers backend (aha's decode loop and ``transformers.generate``) and, where vLLM is installed, of the vLLM
backend, on the same prompts and settings; the log-prob mismatch between the vLLM engine and the trainer on the
engine's own samples; and a few GRPO steps with each engine (time per step, the engine_* mismatch metrics).

    python benchmarks/gpu_checks.py --model smollm2-135m-instruct --steps 4 --out gpu-checks.md

Prints a markdown table (and writes it to --out) for docs/benchmarks.md. Runs each GRPO check as
``python -m aha train`` in a process of its own, so the engines do not share GPU memory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def rollout_rates(model_name: str, dtype: str, prompts: int, samples: int, tokens: int) -> list[str]:
    from aha.algorithms import token_logprobs
    from aha.config import GRPOConfig, load_config
    from aha.data.prompts import PromptBuilder
    from aha.data.tasks import make_task
    from aha.models import load_model
    from aha.rollout import HFBackend, SamplingParams

    config = load_config(GRPOConfig, None, [f"model={model_name}"])
    model, tokenizer = load_model(config.model, dtype=dtype, device="cuda")
    builder = PromptBuilder.from_config(tokenizer, config)
    task = make_task(config.task, dict(config.task_options), eval_size=0, seed=config.seed)
    questions = [task.example(i)["question"] for i in range(prompts)]
    prompt_ids = tokenizer([builder.build(q) for q in questions], add_special_tokens=False)["input_ids"]
    engines = {"aha decode loop": HFBackend(model, tokenizer, 1024),
               "transformers.generate": HFBackend(model, tokenizer, 1024, decode_loop=False)}
    if importlib.util.find_spec("vllm") is not None:
        from aha.rollout.vllm import VLLMBackend

        engines["vLLM"] = VLLMBackend(model, tokenizer, gpu_memory_utilization=0.3, sleep=False)
    rows = []
    seeds = list(range(prompts * samples))
    for label, params in (("greedy", SamplingParams(tokens, 0.0, logprobs=True)),
                          ("T 1.0", SamplingParams(tokens, 1.0, 1.0, logprobs=True))):
        for name, engine in engines.items():
            engine.generate(prompt_ids[:2], params, num_samples=2, seeds=seeds[:4])  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            gens = engine.generate(prompt_ids, params, num_samples=samples, seeds=seeds)
            torch.cuda.synchronize()
            elapsed = time.perf_counter() - t0
            generated = sum(len(g.token_ids) for g in gens)
            gap = mismatch(model, token_logprobs, prompt_ids, gens, samples, params.temperature)
            rows.append(f"| {name} | {label}, {prompts} x {samples}, {tokens} tokens | {generated / elapsed:,.0f} | "
                        f"{gap} |")
    return rows


@torch.no_grad()
def mismatch(model, token_logprobs, prompt_ids, gens, samples, temperature) -> str:
    """Mean and max |engine log-prob - trainer log-prob| over the sampled tokens of the first 32 completions."""
    diffs = []
    for k, gen in enumerate(gens[:32]):
        if not gen.token_ids or gen.logprobs is None:
            continue
        ids = torch.tensor([prompt_ids[k // samples] + gen.token_ids], device="cuda")
        logits = model(input_ids=ids).logits[:, -len(gen.token_ids) - 1: -1].float()
        logits = logits / temperature if temperature > 0 else logits
        mine = token_logprobs(logits, ids[:, -len(gen.token_ids):])[0]
        diffs.append((mine - torch.tensor(gen.logprobs, device="cuda")).abs())
    if not diffs:
        return "n/a"
    every = torch.cat(diffs)
    return f"{float(every.mean()):.2e} / {float(every.max()):.2e}"


def grpo_steps(model_name: str, dtype: str, steps: int, engine: str) -> str:
    with tempfile.TemporaryDirectory() as run:
        settings = [f"model={model_name}", f"dtype={dtype}", "device=cuda", f"max_steps={steps}", "eval_size=0",
                    "save_steps=0", "max_train_minutes=0", f"output_dir={run}", f"rollout_engine={engine}",
                    "engine_ratio_cap=2", "prompts_per_step=16", "group_size=8"]
        done = subprocess.run([sys.executable, "-m", "aha", "train", *settings], capture_output=True, text=True)
        if done.returncode != 0:
            return f"| GRPO, {engine} | failed: {done.stderr.strip().splitlines()[-1][:200]} | | |"
        metrics = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    step = sorted(m["time/step"] for m in metrics)[len(metrics) // 2]
    kl = max(m.get("engine_kl", 0.0) for m in metrics)
    ratio = [round(m.get("engine_ratio", 1.0), 4) for m in metrics]
    return (f"| GRPO, {engine} | {steps} steps, median {step:.2f} s/step | engine_kl max {kl:.2e} | "
            f"engine_ratio {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_checks.py needs a CUDA GPU")
    lines = [f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.model} in {args.dtype}", "",
             "| engine | shape | tokens/s | mismatch mean / max |", "|---|---|---|---|"]
    lines += rollout_rates(args.model, args.dtype, args.prompts, args.samples, args.tokens)
    torch.cuda.empty_cache()
    lines += ["", "| run | steps | mismatch | correction weights |", "|---|---|---|---|"]
    engines = ["transformers"] + (["vllm"] if importlib.util.find_spec("vllm") is not None else [])
    lines += [grpo_steps(args.model, args.dtype, args.steps, engine) for engine in engines]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
