"""Greedy accuracy on a held-out set, strict (right answer in the required format) and lenient
(right final answer anywhere, format ignored) — the numbers a training run is judged by."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aha.data.prompts import PromptBuilder
from aha.rewards.format import follows_format
from aha.rewards.math import answers_equal, extract_answer, normalise_gold
from aha.rollout.base import GenerationBackend, SamplingParams


@dataclass
class HeldoutResult:
    strict_accuracy: float
    """Share of problems answered correctly inside ``<think>…</think><answer>…</answer>``."""
    lenient_accuracy: float
    """Share answered correctly anywhere: the answer tag, else the last boxed, else the last number."""
    format_rate: float
    mean_completion_tokens: float
    truncation_rate: float
    samples: list[dict[str, Any]]

    def metrics(self) -> dict[str, float]:
        return {"strict_accuracy": self.strict_accuracy, "lenient_accuracy": self.lenient_accuracy,
                "format_rate": self.format_rate, "mean_completion_tokens": self.mean_completion_tokens,
                "truncation_rate": self.truncation_rate}


def judge(completion: str, gold: object) -> tuple[bool, bool, bool]:
    """(strict correct, lenient correct, format followed) for one completion."""
    gold_text = normalise_gold(gold)
    formatted = follows_format(completion, strict=True)
    lenient_answer = extract_answer(completion, fallback_last_number=True)
    lenient = lenient_answer is not None and answers_equal(lenient_answer, gold_text)
    strict = formatted and lenient  # a strictly formatted completion's answer is its <answer> tag
    return strict, lenient, formatted


def evaluate_heldout(backend: GenerationBackend, builder: PromptBuilder, examples: list[dict[str, Any]],
                     max_new_tokens: int, stop: tuple[str, ...] = ()) -> HeldoutResult:
    """Greedy-decode every held-out problem once and grade it."""
    prompts = [builder.build(ex["question"]) for ex in examples]
    prompt_ids = builder.tokenizer(prompts, add_special_tokens=False)["input_ids"]
    generations = backend.generate(prompt_ids, SamplingParams(max_new_tokens, temperature=0.0, stop=stop), builder.prefill)
    strict = lenient = formatted = 0
    samples = []
    for ex, gen in zip(examples, generations):
        s, l, f = judge(gen.text, ex["answer"])
        strict, lenient, formatted = strict + s, lenient + l, formatted + f
        samples.append({"question": ex["question"], "answer": ex["answer"], "completion": gen.text,
                        "strict": s, "lenient": l, "format": f, "finish_reason": gen.finish_reason})
    n = max(len(examples), 1)
    return HeldoutResult(strict / n, lenient / n, formatted / n,
                         sum(len(g.token_ids) for g in generations) / n,
                         sum(g.finish_reason == "length" for g in generations) / n, samples)
