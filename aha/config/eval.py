"""``aha eval``: benchmarks evaluated the way the R1 paper does (k samples per problem, pass@1, pass@k, cons@k)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Optional

from aha.config.sections import (DataSection, LimitSection, ModelSection, PaperSampling, PromptSection, RunSection,
                                 SamplesSection, ServerSection, TaskOptionsSection)


@dataclass
class EvalConfig(RunSection, SamplesSection, PaperSampling, PromptSection, LimitSection, TaskOptionsSection,
                 DataSection, ServerSection, ModelSection):
    """Evaluate a model on benchmarks the way the R1 paper does: k samples per problem, pass@1, pass@k, cons@k."""

    command: typing.ClassVar[str] = "eval"

    # --- data --------------------------------------------------------------------------------------
    benchmarks: list[str] = dataclasses.field(default_factory=lambda: ["math500"])
    """Comma-separated: math500, aime24, amc23, gsm8k, svamp, asdiv, mawps, minerva_math, humaneval, a built-in
    training task (chain_sum: the held-out problems `aha train` evaluates), or a dataset file, folder or hub name
    (read with field_map)."""
    data_dir: Optional[str] = None
    """Folder holding the benchmark files; default $AHA_DATA_DIR, else ./data, else shared/data beside the checkout."""

    # --- samples and grading -----------------------------------------------------------------------
    pass_k: list[int] = dataclasses.field(default_factory=list)
    """Also report pass@k for these k (each <= k), e.g. 1,8."""
    fallback_last_number: bool = True
    """With no <answer> tag and no \\boxed{}, grade (and vote on) the last number of the response."""
    grader_workers: int = 1
    """Processes grading while generation goes on (0: grade in this process, after each batch)."""

    def check(self) -> None:
        self.require(bool(self.benchmarks), "benchmarks", "give at least one, e.g. --benchmarks math500,aime24")
        self.require_non_negative("grader_workers")
        if self.temperature == 0 and self.k > 1:
            raise self.error("temperature", f"0 is greedy decoding: its {self.k} samples would be identical; use "
                                            "--k 1 for greedy, or a temperature > 0 (the paper: 0.6) for k samples")
        bad = [kk for kk in self.pass_k if not 1 <= kk <= self.k]
        self.require(not bad, "pass_k", f"each k must be between 1 and k={self.k}, got {bad}")
