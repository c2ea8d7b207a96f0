"""Greedy accuracy on a held-out set — the numbers a training run is judged by — graded by the same
grader as ``aha eval`` and the training reward (:func:`aha.eval.grading.grade`):

    lenient  the grader pays the answer (the <answer> tag, else the last \\boxed{}, else the last number)
    strict   lenient, and the whole completion is <think>…</think><answer>…</answer> and nothing else
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aha.data.prompts import PromptBuilder
from aha.eval.grading import GradeSpec, grade
from aha.rollout.base import GenerationBackend, SamplingParams
from aha.utils.stats import mean


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

    def line(self) -> str:
        return (f"{len(self.samples)} problems, greedy: strict {100 * self.strict_accuracy:.1f}%  lenient "
                f"{100 * self.lenient_accuracy:.1f}%  format {100 * self.format_rate:.1f}%")


def evaluate_heldout(backend: GenerationBackend, builder: PromptBuilder, examples: list[dict[str, Any]],
                     max_new_tokens: int, stop: tuple[str, ...] = (),
                     spec: GradeSpec = GradeSpec()) -> HeldoutResult:
    """Greedy-decode every held-out problem once with a backend and grade it with ``spec`` (default:
    ``accuracy``)."""
    prompts = [builder.build(ex["question"]) for ex in examples]
    prompt_ids = builder.tokenizer(prompts, add_special_tokens=False)["input_ids"]
    params = SamplingParams(max_new_tokens, temperature=0.0, stop=stop)
    return grade_heldout(examples, backend.generate(prompt_ids, params, builder.prefill), spec)


def evaluate_sampler(sampler, examples: list[dict[str, Any]], max_new_tokens: int, stop: tuple[str, ...] = (),
                     spec: GradeSpec = GradeSpec()) -> HeldoutResult:
    """The same, through an evaluation sampler (a local model or a served one, see :mod:`aha.eval.samplers`)."""
    prompts = sampler.prompts([ex["question"] for ex in examples])
    greedy = SamplingParams(max_new_tokens, temperature=0.0, stop=stop)
    generations = sampler.sample(prompts, 1, greedy, [0] * len(prompts))
    return grade_heldout(examples, generations, spec)


def grade_heldout(examples: list[dict[str, Any]], generations: list, spec: GradeSpec) -> HeldoutResult:
    completions = [g.text for g in generations]
    keys = sorted({key for ex in examples for key in ex})
    columns = {key: [ex.get(key) for ex in examples] for key in keys}
    verdicts = grade(spec, completions, columns)
    samples = []
    for ex, gen, verdict in zip(examples, generations, verdicts):
        lenient = verdict["correct"]
        tokens = getattr(gen, "completion_tokens", 0) or len(gen.token_ids)
        samples.append({"question": ex["question"], "answer": ex.get("answer"), "completion": gen.text,
                        "extracted": verdict["extracted"], "strict": lenient and verdict["format"],
                        "lenient": lenient, "format": verdict["format"], "finish_reason": gen.finish_reason,
                        "tokens": tokens})
    share = lambda key: mean([float(bool(s[key])) for s in samples]) or 0.0  # noqa: E731
    return HeldoutResult(share("strict"), share("lenient"), share("format"),
                         mean([float(s["tokens"]) for s in samples]) or 0.0,
                         mean([float(s["finish_reason"] == "length") for s in samples]) or 0.0, samples)
