"""The evaluation config: every option of ``aha eval``, documented once by the docstring under it."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Literal, Optional

from aha.config import ConfigError

SAMPLE_DEFINING = ("model", "api_base", "tokenizer", "api_chat", "temperature", "top_p", "max_new_tokens", "stop",
                   "prompt", "system_prompt", "question_template", "prefill", "use_chat_template", "seed",
                   "fallback_last_number", "field_map")
"""Fields whose change would make stored samples differ from new ones: a resumed evaluation must match them."""


@dataclass
class EvalConfig:
    """Evaluate a model on benchmarks the way the R1 paper does: k samples per problem, pass@1, pass@k, cons@k."""

    command: typing.ClassVar[str] = "eval"

    # --- model -------------------------------------------------------------------------------------
    model: str = ""
    """An HF folder or hub id, a run directory (its latest checkpoint), a checkpoint directory, a .gguf file,
    `smollm2-135m-instruct`, `tiny:llama`/`tiny:qwen2`, or with api_base the model name the server serves."""
    api_base: Optional[str] = None
    """Base URL of an OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1); the model is then sampled there."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the server's API key (sent as a Bearer token when set)."""
    api_chat: bool = False
    """With api_base: send messages to /chat/completions (the server applies the chat template) instead of
    prompt text to /completions. The prefill is not sent in this mode."""
    api_concurrency: int = 8
    """With api_base: requests in flight at once."""
    tokenizer: Optional[str] = None
    """With api_base: a local tokenizer (HF folder or id) to build chat-template prompts and count tokens;
    default: the model name when it is a local folder."""
    dtype: str = "auto"
    """auto (float32 on CPU, bfloat16 on a GPU that has it), float32, bfloat16 or float16."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    threads: int = 0
    """CPU threads for torch; 0 keeps torch's default (one per core)."""

    # --- data --------------------------------------------------------------------------------------
    benchmarks: list[str] = dataclasses.field(default_factory=lambda: ["math500"])
    """Comma-separated: math500, aime24, amc23, gsm8k, svamp, asdiv, mawps, minerva_math, humaneval, or a
    dataset file, folder or hub name (read with field_map)."""
    data_dir: Optional[str] = None
    """Folder holding the benchmark files; default $AHA_DATA_DIR, else ./data, else shared/data beside the checkout."""
    field_map: dict[str, str] = dataclasses.field(default_factory=dict)
    """For benchmarks given as files: ours=theirs pairs, e.g. `question=problem answer=answer`, composite
    `question=Body+Question`."""
    on_error: Literal["raise", "skip"] = "raise"
    """A malformed row (missing or empty field, bad JSON, non-UTF-8): raise (stop with file:line) or skip and count."""
    limit: int = 0
    """Evaluate only the first N problems of each benchmark (0: all)."""

    # --- sampling ----------------------------------------------------------------------------------
    k: int = 4
    """Samples per problem: pass@1 is their mean correctness, pass@k and cons@k use all k. Greedy: --k 1 --temperature 0."""
    pass_k: list[int] = dataclasses.field(default_factory=list)
    """Also report pass@k for these k (each <= k), e.g. 1,8."""
    temperature: float = 0.6
    """Sampling temperature (the paper's 0.6); 0 is greedy decoding."""
    top_p: float = 0.95
    """Nucleus-sampling threshold (the paper's 0.95)."""
    max_new_tokens: int = 1024
    """Longest response in tokens; longer ones are cut and counted in the truncation rate."""
    stop: list[str] = dataclasses.field(default_factory=list)
    """Strings that end a response besides the end-of-sequence token, e.g. </answer>."""
    seed: int = 0
    """Seed of sampling; each batch is seeded from it, the benchmark and the batch's place, so a resumed
    evaluation draws the same samples as an uninterrupted one."""
    batch_size: int = 16
    """Sequences generated together (prompts x k)."""

    # --- prompts -----------------------------------------------------------------------------------
    prompt: str = "r1-zero"
    """r1-zero (the paper's instruction), chat (the question alone as the user message) or plain."""
    system_prompt: Optional[str] = None
    """Replaces the template's instruction text."""
    question_template: str = "{question}"
    """How each question is written into the prompt, e.g. `{question} Put your final answer within \\boxed{}.`"""
    prefill: Optional[str] = None
    """Text that opens the response; default `<think>` with the r1-zero template, else nothing."""
    use_chat_template: bool = True
    """Wrap prompts in the tokenizer's chat template when it has one (instruct models)."""

    # --- grading and output ------------------------------------------------------------------------
    fallback_last_number: bool = True
    """With no <answer> tag and no \\boxed{}, grade (and vote on) the last number of the response."""
    grader_workers: int = 1
    """Processes grading while generation goes on (0: grade in this process, after each batch)."""
    output: str = ""
    """Folder for results.json and samples.jsonl; running again with the same folder resumes. Default
    runs/eval-<date>-<time>."""

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("model: give the model to evaluate (aha eval MODEL ...)")
        if not self.benchmarks:
            raise ConfigError("benchmarks: give at least one, e.g. --benchmarks math500,aime24")
        for name in ("k", "max_new_tokens", "batch_size", "api_concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("limit", "grader_workers", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError(f"temperature must be >= 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")
        if self.temperature == 0 and self.k > 1:
            raise ConfigError(f"temperature 0 is greedy decoding: its {self.k} samples would be identical; use --k 1 "
                              "for greedy, or a temperature > 0 (the paper: 0.6) for k samples")
        bad = [kk for kk in self.pass_k if not 1 <= kk <= self.k]
        if bad:
            raise ConfigError(f"pass_k: each k must be between 1 and k={self.k}, got {bad}")
        if "{question}" not in self.question_template:
            raise ConfigError("question_template must contain {question}")

    @property
    def prefill_text(self) -> str:
        """The prefill in effect (see the field ``prefill``)."""
        if self.prefill is not None:
            return self.prefill
        return "<think>" if self.prompt == "r1-zero" else ""


def sample_settings(config: EvalConfig) -> dict[str, typing.Any]:
    """The settings that define the samples (see SAMPLE_DEFINING), as stored beside them."""
    return {name: getattr(config, name) for name in SAMPLE_DEFINING}
