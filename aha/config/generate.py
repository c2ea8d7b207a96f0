"""``aha generate`` and ``aha sample``: reasoning traces from a teacher, and rejection sampling of them."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal, Optional

from aha.config.loading import Config
from aha.config.sections import (DataSection, LimitSection, ModelSection, PaperSampling, PromptSection, ReproSection,
                                 SamplesSection, ServerSection)


@dataclass
class TracesSection(ReproSection, SamplesSection, PaperSampling, PromptSection, LimitSection, DataSection,
                    ServerSection, ModelSection):
    """Where traces come from (a teacher, local or served, on a set of prompts) and where they go."""

    prompts: str = ""
    """The prompts: a .jsonl, .json, .csv or .parquet file, a folder of them, a hub dataset name, or a built-in
    task (chain_sum) whose training problems are used; rows need a `question` (map yours with field_map)."""
    num_prompts: int = 0
    """With a built-in task: how many of its training problems (0: 1000)."""

    def check(self) -> None:
        self.require_non_negative("num_prompts")
        if self.temperature == 0 and self.k > 1:
            raise self.error("temperature", f"0 is greedy decoding: its {self.k} samples would be identical")


@dataclass
class OutputSection(Config):
    output: str = ""
    """The output file (JSONL). aha generate: one line per trace, the prompt row's fields plus `completion` (and
    `reasoning` when the server returns reasoning_content); running the same command again adds only what is
    missing. aha sample: the kept traces, rows ready for aha sft (`prompt`, `completion`)."""

    def check(self) -> None:
        self.require(bool(self.output), "output", "give the output file, e.g. --output traces.jsonl")


@dataclass
class GenerateConfig(OutputSection, TracesSection):
    """Reasoning traces from a teacher: k samples per prompt, written as they come, resumable."""

    command: typing.ClassVar[str] = "generate"

    def check(self) -> None:
        self.require(bool(self.prompts), "prompts", "give the prompts, e.g. aha generate data/questions.jsonl")


@dataclass
class FilterSection(Config):
    """Which traces rejection sampling keeps: verified, readable, a few per prompt, no duplicates."""

    verify_with: str = "accuracy"
    """The registered reward that must pay a trace (> 0) for it to be kept: accuracy (math, against the row's
    `answer`) or code (the row's `tests`); the same graders as training; `none` keeps unverified traces."""
    require_format: Literal["think", "r1", "none"] = "think"
    """Structure a trace must have: think, R1-Zero's <think>…</think> then an answer (an <answer> tag, a
    \\boxed{} or a final line); r1, |special_token|reasoning|special_token|summary; none."""
    language: Optional[str] = "en"
    """Drop traces that mix languages: at least min_language_share of their words must be in this language's
    script (en, fr, de, es, it, pt, zh, ja, ko, ru); null: no check."""
    min_language_share: float = 0.95
    """Share of words in the target language's script a kept trace needs."""
    max_repetition: float = 0.5
    """Drop traces whose word 4-grams repeat more than this share (1 - distinct / total); 1: no check."""
    max_paragraph_chars: int = 3000
    """Drop traces with a paragraph (text between blank lines) longer than this (0: no check)."""
    allow_code: bool = False
    """Keep traces with code blocks (```); off for math, where code does not belong."""
    max_per_prompt: int = 4
    """Keep at most this many traces per prompt (0: all that pass)."""
    dedupe: bool = True
    """Drop a trace whose text (whitespace and case aside) a kept trace of the same prompt already has."""

    def check(self) -> None:
        self.require(0 <= self.min_language_share <= 1, "min_language_share",
                     f"must be in [0, 1], got {self.min_language_share}")
        self.require(0 <= self.max_repetition <= 1, "max_repetition", f"must be in [0, 1], got {self.max_repetition}")
        self.require_non_negative("max_paragraph_chars", "max_per_prompt")


@dataclass
class TracesFileSection(Config):
    traces: str = ""
    """A traces file (from aha generate). aha sample grades and filters it; given prompts and a model, it first
    generates the missing samples into it (default: OUTPUT with .traces.jsonl). aha distill uses it instead of
    sampling the teacher."""


@dataclass
class SampleConfig(OutputSection, TracesFileSection, FilterSection, TracesSection):
    """Rejection sampling as R1 does it: k traces per prompt from a model (or a traces file), keep the verified
    and readable ones."""

    command: typing.ClassVar[str] = "sample"

    def check(self) -> None:
        self.require(bool(self.prompts or self.traces), "prompts", "give the prompts to sample (and a model), or "
                                                                   "--traces FILE from aha generate")

    @property
    def traces_path(self) -> str:
        return self.traces or str(self.output).removesuffix(".jsonl") + ".traces.jsonl"
