"""What bfloat16 products (``matmul_precision=medium``) buy on this CPU, part by part.

Times, at ``highest`` (float32 products) and at ``medium`` (oneDNN's float32 products in bfloat16, where the
CPU has them): the attention's forward and backward alone (CPU flash attention, SmolLM2-135M's heads, a causal
mask) computed as it is and through ``aha.models.attention.float32_attention``; one of the model's linear
products; and one forward-backward of the policy (SmolLM2-135M with the trainer's layers, the chunked token
log-probabilities, ``.backward()``) on random tokens, with its FLOP rate (6 x parameters x tokens / time).

    .venv/bin/python benchmarks/precision.py --rows 4 --tokens 190 --repeats 3

Milliseconds, the best over ``--repeats`` alternating repetitions (each the best of 20 runs of a part, 2 of
the forward-backward). On a CPU without bfloat16 products both columns
compute in float32 and read the same.
"""

from __future__ import annotations

import argparse

import torch
from step_split import best_seconds  # benchmarks/, the folder of this script

from aha.algorithms.logprobs import token_logprobs
from aha.models import load_model
from aha.models.attention import float32_attention
from aha.models.linear import accumulate_weight_gradients

PRECISIONS = ("highest", "medium")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rows", type=int, default=4, help="sequences in the forward-backward (a micro-batch)")
    parser.add_argument("--tokens", type=int, default=190, help="tokens a sequence (prompt and completion)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model, _ = load_model(args.model)
    accumulate_weight_gradients(model)
    model.train()
    config = model.config
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    dim = config.hidden_size // heads
    rows, length = args.rows, args.tokens
    query, key, value = (torch.randn(rows, h, length, dim, requires_grad=True) for h in (heads, kv, kv))
    mask = torch.ones(length, length, dtype=torch.bool).tril()[None, None].expand(rows, 1, length, length)

    def attention(through_float32: bool):
        attend = lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(  # noqa: E731
            q, k, v, attn_mask=mask, enable_gqa=True)
        out = float32_attention(attend, query, key, value) if through_float32 else attend(query, key, value)
        out.sum().backward()

    inputs = torch.randn(rows * length, config.hidden_size)
    weight = torch.randn(config.intermediate_size, config.hidden_size)
    ids = torch.randint(0, config.vocab_size, (rows, length), generator=torch.Generator().manual_seed(0))

    def forward_backward():
        logprobs = token_logprobs(model(input_ids=ids).logits[:, :-1], ids[:, 1:])
        (-logprobs.mean()).backward()
        model.zero_grad(set_to_none=True)

    parts = {"attention forward+backward, as it is": lambda: attention(False),
             "attention forward+backward, float32_attention": lambda: attention(True),
             f"linear {rows * length} x {config.hidden_size} -> {config.intermediate_size}":
                 lambda: torch.nn.functional.linear(inputs, weight),
             f"policy forward-backward, {rows} x {length} tokens": forward_backward}
    times = {(part, p): float("inf") for part in parts for p in PRECISIONS}
    try:
        for _ in range(args.repeats):
            for precision in PRECISIONS:
                torch.set_float32_matmul_precision(precision)
                for part, run in parts.items():
                    tries = 2 if run is forward_backward else 20  # the small parts: best of many
                    times[part, precision] = min(times[part, precision], 1e3 * best_seconds(run, tries))
    finally:
        torch.set_float32_matmul_precision("highest")
    parameters = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}\n")
    print("| part | highest ms | medium ms | highest / medium |\n|---|---|---|---|")
    for part in parts:
        high, medium = times[part, "highest"], times[part, "medium"]
        print(f"| {part} | {high:.2f} | {medium:.2f} | {high / medium:.2f}x |")
    flops = 6 * parameters * rows * length
    fb = f"policy forward-backward, {rows} x {length} tokens"
    print(f"\npolicy forward-backward: {flops / times[fb, 'highest'] / 1e6:.0f} GFLOP/s at highest, "
          f"{flops / times[fb, 'medium'] / 1e6:.0f} at medium")


if __name__ == "__main__":
    main()
