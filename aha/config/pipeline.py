"""The settings of the pipeline's own stage kinds (the others are the commands' configs): ``mix`` merges
SFT datasets with weights and caps."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from aha.config.generate import OutputSection
from aha.config.sections import ReproSection

MIX_INPUT_KEYS = ("data", "weight", "max_rows", "field_map")


@dataclass
class MixConfig(OutputSection, ReproSection):
    """Merge datasets (e.g. rejection-sampled reasoning traces and general SFT data) into one JSONL file."""

    command: typing.ClassVar[str] = "pipeline"

    inputs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """The datasets to merge, each `{data: PATH, weight: 1.0, max_rows: 0, field_map: {}}`: `data` a file,
    folder or hub name of SFT rows; `weight` how many times each row is taken (2: twice, 0.5: a random half);
    `max_rows` a cap on that input's rows after weighting (0: none); `field_map` renames its fields
    (`{prompt: question, completion: solution}`)."""
    max_rows: int = 0
    """A cap on the merged rows (0: none); inputs are cut in proportion to their weighted size. `seed` seeds
    the sampling of fractional weights and the final shuffle."""

    def check(self) -> None:
        self.require(bool(self.inputs), "inputs", "give at least one input, e.g. [{data: kept.jsonl}]")
        self.require_non_negative("max_rows")
        for i, item in enumerate(self.inputs):
            name = f"inputs[{i}]"
            self.require(isinstance(item, dict), "inputs", f"{name} must be a mapping with a `data` key")
            unknown = sorted(set(item) - set(MIX_INPUT_KEYS))
            self.require(not unknown, "inputs", f"{name}: unknown key {', '.join(unknown)}; valid: "
                                                f"{', '.join(MIX_INPUT_KEYS)}")
            self.require(isinstance(item.get("data"), str) and bool(item.get("data")), "inputs",
                         f"{name}.data: give a dataset path or name")
            weight = item.get("weight", 1.0)
            self.require(isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight > 0,
                         "inputs", f"{name}.weight must be a number > 0, got {weight!r}")
            cap = item.get("max_rows", 0)
            self.require(isinstance(cap, int) and not isinstance(cap, bool) and cap >= 0, "inputs",
                         f"{name}.max_rows must be an integer >= 0, got {cap!r}")
            self.require(isinstance(item.get("field_map", {}), dict), "inputs", f"{name}.field_map must be a mapping")
