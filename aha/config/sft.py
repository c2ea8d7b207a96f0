"""``aha sft``: supervised fine-tuning on conversations or prompt/completion pairs (R1's cold start, and
the student's side of distillation)."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from aha.config.sections import (CheckpointSection, DataSection, HeldoutDataSection, ModelSection, OptimSection,
                                 PromptSection, RunSection, TeacherSection, TuningSection)


@dataclass
class SFTOptim(OptimSection):
    """Supervised fine-tuning's schedule: a few epochs with warm-up and cosine decay, no time limit; the
    fields are the shared optimiser settings, only their defaults differ."""

    learning_rate: float = 2e-5
    lr_scheduler: str = "cosine"
    warmup_steps: int = 5
    micro_batch_size: int = 8
    max_steps: int = 0
    max_train_minutes: float = 0.0


@dataclass
class SFTConfig(TeacherSection, CheckpointSection, RunSection, SFTOptim, PromptSection, HeldoutDataSection,
                DataSection, TuningSection, ModelSection):
    """Supervised fine-tuning: the loss on response tokens only, full weights or LoRA."""

    command: typing.ClassVar[str] = "sft"

    # --- data --------------------------------------------------------------------------------------
    dataset: str = ""
    """Training rows: a .jsonl, .json, .csv or .parquet file, a folder of them, or a hub dataset name. Rows are
    conversations (`messages`: a list of {role, content}) or `prompt` + `completion` pairs (map other field
    names with field_map, e.g. {prompt: question, completion: response})."""
    eval_fraction: float = 0.05
    """Share of the dataset held out for the evaluation loss when there is no eval_dataset (at least one row
    once the dataset has 20; 0: none)."""

    # --- examples ----------------------------------------------------------------------------------
    max_length: int = 1024
    """Longest example in tokens; longer ones are cut from the right (counted and reported)."""
    train_on: Literal["completion", "all"] = "completion"
    """completion: the loss is on the response (assistant) tokens only; all: on every token."""
    trace_format: Literal["as_is", "think", "r1"] = "as_is"
    """How a reasoning trace is laid out as the response: as written; think, R1-Zero's <think>…</think>
    <answer>…</answer>; or r1, R1's readable cold-start pattern |special_token|reasoning|special_token|summary.
    The reasoning is the row's `reasoning` field, or the completion's own <think> block."""
    reasoning_delimiter: str = "|special_token|"
    """The special token around the reasoning with trace_format r1."""

    # --- batches -----------------------------------------------------------------------------------
    batch_size: int = 16
    """Examples per optimiser step; gradients accumulate over micro-batches of micro_batch_size."""
    num_epochs: float = 3.0
    """Passes over the training rows (used when max_steps is 0)."""
    packing: bool = False
    """Pack several examples into each row of a micro-batch (up to max_length tokens, each example attending
    only to itself) instead of padding them; the same loss, less padding."""

    # --- logit distillation (with a teacher) --------------------------------------------------------
    distill_alpha: float = 0.5
    """With a teacher: loss = (1 - alpha) * NLL of the response + alpha * KL(teacher || student)."""
    distill_temperature: float = 1.0
    """With a teacher: both distributions are softened by this temperature (the KL is scaled by its square)."""

    def check(self) -> None:
        self.require(bool(self.dataset), "dataset", "give the training rows, e.g. dataset=data/cold_start.jsonl")
        self.require_positive("batch_size", "max_length")
        self.require(0 <= self.eval_fraction < 1, "eval_fraction", f"must be in [0, 1), got {self.eval_fraction}")
        self.require(self.num_epochs > 0 or self.max_steps > 0, "num_epochs",
                     "give num_epochs > 0, or max_steps > 0")
        self.require(bool(self.reasoning_delimiter), "reasoning_delimiter", "must not be empty")
        self.require(0 <= self.distill_alpha <= 1, "distill_alpha", f"must be in [0, 1], got {self.distill_alpha}")
        self.require(self.distill_temperature > 0, "distill_temperature",
                     f"must be > 0, got {self.distill_temperature}")
