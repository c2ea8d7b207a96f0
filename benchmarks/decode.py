"""Decoding speed: aha's decode loop against ``transformers.generate``, same model, prompts and settings.

Both run inside ``HFBackend`` (the same prompt prefill and shared-prefix KV cache); the difference is the
loop that samples the new tokens. Greedy shapes (batch 1, 8, 32, 64) and the default recipe's shape (8 prompts
x 8 seeded samples at temperature 0.7, 48 tokens, stop at "</answer>") on SmolLM2-135M-Instruct in fp32.
Each measurement alternates the two engines over repetitions and checks that they produced the same tokens
(greedy: all of them; sampled: how many rows are identical).
The machine's bounds are measured in the same run: the compute bound (fp32 matmul rate / 2 FLOPs per
parameter per token) and the memory bound (copy bandwidth x batch / weight bytes, every step reads every
weight once).

    .venv/bin/python benchmarks/decode.py --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_split import matmul_peak, memory_bandwidth  # noqa: E402  (the machine's bounds, measured alike)


def main() -> None:
    from aha.config import GRPOConfig, load_config
    from aha.data.prompts import PromptBuilder
    from aha.data.tasks import make_task
    from aha.models import load_model
    from aha.rollout import HFBackend, SamplingParams

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    config = load_config(GRPOConfig, None, [])
    model, tokenizer = load_model(config.model)
    params = sum(p.numel() for p in model.parameters())
    builder = PromptBuilder.from_config(tokenizer, config)
    task = make_task(config.task, dict(config.task_options), eval_size=0, seed=config.seed)
    questions = [task.example(i)["question"] for i in range(64)]
    prompt_ids = tokenizer([builder.build(q) for q in questions], add_special_tokens=False)["input_ids"]
    peak, bandwidth = matmul_peak(), memory_bandwidth()
    compute_bound = peak / (2 * params)
    weight_bytes = params * 4
    print(f"{params / 1e6:.0f}M parameters; fp32 matmul {peak / 1e9:.1f} GFLOP/s -> compute bound "
          f"{compute_bound:.0f} tokens/s; copy {bandwidth / 1e9:.1f} GB/s; {torch.get_num_threads()} threads\n")
    engines = {"aha": HFBackend(model, tokenizer, 64), "transformers": HFBackend(model, tokenizer, 64,
                                                                                 decode_loop=False)}
    stop = tuple(config.stop_strings)
    shapes = [(f"greedy, batch {b}", prompt_ids[:b], 1, SamplingParams(args.max_new_tokens, 0.0, stop=stop), None)
              for b in (1, 8, 32, 64)]
    sampled = SamplingParams(args.max_new_tokens, config.temperature, config.top_p, stop)
    shapes.append(("default recipe's shape, greedy: 8 prompts x 8", prompt_ids[:8], 8,
                   SamplingParams(args.max_new_tokens, 0.0, stop=stop), None))
    shapes.append(("default recipe: 8 prompts x 8 samples, T 0.7", prompt_ids[:8], 8, sampled, list(range(64))))
    print("| shape | aha tokens/s | transformers tokens/s | ratio | same tokens | memory bound tokens/s |")
    print("|---|---|---|---|---|---|")
    for name, prompts, samples, sampling, seeds in shapes:
        rates: dict[str, list[float]] = {k: [] for k in engines}
        outputs: dict[str, list[list[int]]] = {}
        for repeat in range(args.repeats):
            order = list(engines) if repeat % 2 == 0 else list(engines)[::-1]
            for key in order:
                t0 = time.perf_counter()
                gens = engines[key].generate(prompts, sampling, builder.prefill, samples, seeds=seeds)
                elapsed = time.perf_counter() - t0
                rates[key].append(sum(len(g.token_ids) for g in gens) / elapsed)
                outputs[key] = [g.token_ids for g in gens]
        # greedy: every token the same; sampled: rows identical (a last-digit difference in a probability can
        # move a seeded draw across a token boundary, and the row goes its own way from there)
        identical = sum(x == y for x, y in zip(outputs["aha"], outputs["transformers"]))
        same = "yes" if identical == len(outputs["aha"]) else f"{identical}/{len(outputs['aha'])} rows"
        a, t = statistics.median(rates["aha"]), statistics.median(rates["transformers"])
        rows = len(prompts) * samples
        print(f"| {name} | {a:.0f} ({min(rates['aha']):.0f}–{max(rates['aha']):.0f}) | {t:.0f} "
              f"({min(rates['transformers']):.0f}–{max(rates['transformers']):.0f}) | {a / t:.2f}x | "
              f"{same} | {bandwidth / 2 * rows / weight_bytes:.0f} |", flush=True)


if __name__ == "__main__":
    main()
