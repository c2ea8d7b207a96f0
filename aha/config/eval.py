"""``aha eval``: benchmarks evaluated the way the R1 paper does (k samples per problem, pass@1, pass@k, cons@k)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Literal, Optional

from aha.config.sections import FieldMapSection, ModelSection, PromptSection, RunSection, SamplingSection


@dataclass
class PaperSampling(SamplingSection):
    """Sampling as the paper evaluates (temperature 0.6, top-p 0.95, k samples per problem), with room for
    long responses; the fields are the shared sampling settings, only their defaults differ."""

    temperature: float = 0.6
    top_p: float = 0.95
    max_completion_length: int = 1024
    stop_strings: list[str] = dataclasses.field(default_factory=list)
    generation_batch_size: int = 16


@dataclass
class EvalConfig(RunSection, PaperSampling, PromptSection, FieldMapSection, ModelSection):
    """Evaluate a model on benchmarks the way the R1 paper does: k samples per problem, pass@1, pass@k, cons@k."""

    command: typing.ClassVar[str] = "eval"

    # --- model served elsewhere --------------------------------------------------------------------
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

    # --- data --------------------------------------------------------------------------------------
    benchmarks: list[str] = dataclasses.field(default_factory=lambda: ["math500"])
    """Comma-separated: math500, aime24, amc23, gsm8k, svamp, asdiv, mawps, minerva_math, humaneval, or a
    dataset file, folder or hub name (read with field_map)."""
    data_dir: Optional[str] = None
    """Folder holding the benchmark files; default $AHA_DATA_DIR, else ./data, else shared/data beside the checkout."""
    on_error: Literal["raise", "skip"] = "raise"
    """A malformed row (missing or empty field, bad JSON, non-UTF-8): raise (stop with file:line) or skip and count."""
    limit: int = 0
    """Evaluate only the first N problems of each benchmark (0: all)."""

    # --- samples and grading -----------------------------------------------------------------------
    k: int = 4
    """Samples per problem: pass@1 is their mean correctness, pass@k and cons@k use all k. Greedy: --k 1
    --temperature 0."""
    pass_k: list[int] = dataclasses.field(default_factory=list)
    """Also report pass@k for these k (each <= k), e.g. 1,8."""
    fallback_last_number: bool = True
    """With no <answer> tag and no \\boxed{}, grade (and vote on) the last number of the response."""
    grader_workers: int = 1
    """Processes grading while generation goes on (0: grade in this process, after each batch)."""

    def check(self) -> None:
        self.require(bool(self.benchmarks), "benchmarks", "give at least one, e.g. --benchmarks math500,aime24")
        self.require_positive("k", "api_concurrency")
        self.require_non_negative("limit", "grader_workers")
        if self.temperature == 0 and self.k > 1:
            raise self.error("temperature", f"0 is greedy decoding: its {self.k} samples would be identical; use "
                                            "--k 1 for greedy, or a temperature > 0 (the paper: 0.6) for k samples")
        bad = [kk for kk in self.pass_k if not 1 <= kk <= self.k]
        self.require(not bad, "pass_k", f"each k must be between 1 and k={self.k}, got {bad}")
