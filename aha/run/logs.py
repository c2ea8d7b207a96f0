"""A run's JSONL logs, trimmed back exactly to a checkpoint when the run resumes.

Every log is append-only. A checkpoint records each log's size in bytes at the moment it was written;
resuming cuts every log back to that size, so the lines the resumed run writes again are never there
twice, and a line half-written by a killed process is gone.
"""

from __future__ import annotations

from typing import Any

from aha.run.layout import RunLayout
from aha.utils.io import JsonlFile, atomic_write_json, atomic_write_text, jsonl_text


class _ReadOnlyJsonl(JsonlFile):
    """A log another process writes: read as usual, appends and cuts ignored."""

    def append(self, *records: dict[str, Any]) -> None:
        return None

    def truncate(self, size: int) -> None:
        return None


class RunLogs:
    """metrics.jsonl, samples.jsonl, eval.jsonl and the per-evaluation sample files of one run. With
    ``write=False`` (every rank of a distributed run but rank 0) nothing is written: the logs are written once."""

    def __init__(self, layout: RunLayout, write: bool = True):
        self.layout = layout
        self.write = write
        kind = JsonlFile if write else _ReadOnlyJsonl
        self.metrics = kind(layout.metrics)
        self.samples = kind(layout.samples)
        self.evals = kind(layout.evals)

    def _files(self) -> dict[str, JsonlFile]:
        return {"metrics": self.metrics, "samples": self.samples, "evals": self.evals}

    def sizes(self) -> dict[str, int]:
        """Each log's size, to be stored in a checkpoint."""
        return {name: log.size() for name, log in self._files().items()}

    def restore(self, sizes: dict[str, int], step: int, finished: bool = False) -> None:
        """Cut every log back to ``sizes`` and drop evaluation samples of steps after ``step``. A ``finished`` run's
        evaluations are kept (its final evaluation is written after its last checkpoint), less a cut-off line."""
        for name, log in self._files().items():
            if name == "evals" and finished:
                log.drop_partial_line()
            else:
                log.truncate(sizes.get(name, 0))
        if not self.write:
            return
        for eval_step, path in self.layout.eval_sample_files():
            if eval_step > step:
                path.unlink(missing_ok=True)

    def write_eval_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        """Every completion of the evaluation at ``step``, replacing an earlier file of the same step."""
        if not self.write:
            return
        atomic_write_text(self.layout.eval_samples(step), jsonl_text(samples))

    def write_summary(self, summary: dict[str, Any]) -> None:
        if not self.write:
            return
        atomic_write_json(self.layout.summary, summary)
