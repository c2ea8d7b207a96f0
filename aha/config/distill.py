"""``aha distill``: the whole distillation in one command — teacher traces, rejection sampling, SFT of one
or several students, every student and the teacher evaluated on the same held-out set."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal

from aha.config.generate import FilterSection, TracesFileSection, TracesSection
from aha.config.sections import EvalSizeSection, RunSection


@dataclass
class DistillConfig(EvalSizeSection, RunSection, TracesFileSection, FilterSection, TracesSection):
    """Response distillation as the paper does it (SFT of students on the teacher's verified traces), or
    logit or on-policy distillation; `model` is the teacher."""

    command: typing.ClassVar[str] = "distill"

    students: list[str] = dataclasses.field(default_factory=lambda: ["smollm2-135m-instruct"])
    """The models to distil into (HF folders or ids, .gguf files, run directories, aliases), each fine-tuned in
    its own run directory under students/."""
    method: Literal["response", "logit", "on_policy"] = "response"
    """response: SFT on the kept traces (the paper's). logit: SFT plus the KL to the teacher's next-token
    distribution on the same traces (teacher and student share a tokenizer). on_policy: the student samples,
    the teacher scores each of its tokens (per-token reverse KL as the advantage)."""
    sft: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Settings of each student's training, as `aha sft` (response, logit) or `aha train` (on_policy) fields,
    e.g. {learning_rate: 2e-5, num_epochs: 3, batch_size: 16}."""
    eval_task: str = ""
    """The built-in task or dataset whose held-out problems evaluate the teacher and every student before and
    after (default: prompts, when it is a built-in task)."""

    def check(self) -> None:
        self.require(bool(self.students), "students", "give at least one student model")
        self.require(bool(self.prompts or self.traces), "prompts", "give the prompts the teacher answers (a task or "
                                                                   "a dataset), or traces=FILE")
        self.require(bool(self.eval_task or self.prompts), "eval_task", "give the held-out set (a task or dataset)")
