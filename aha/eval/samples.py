"""``samples.jsonl``: every graded sample of an evaluation, appended as it is graded, and what makes an
evaluation resumable.

Each line is one sample, keyed by (benchmark, problem index, sample index). A killed evaluation leaves
at most one partly written last line; reopening the file drops that line (it is produced again) and
remembers every complete sample, so a re-run generates only the missing ones and never duplicates one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from aha.data.readers import DataError
from aha.utils.io import JsonlFile

SampleKey = tuple[str, int, int]


def sample_key(record: dict[str, Any]) -> SampleKey:
    return (str(record["benchmark"]), int(record["problem"]), int(record["sample"]))


class SampleStore:
    """Append-only JSONL of graded samples, deduplicated by key."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = JsonlFile(self.path, fsync=True)
        self.samples: dict[SampleKey, dict[str, Any]] = {}
        self.dropped_partial_line = self.file.drop_partial_line()  # a line cut short by a kill: made again
        try:
            for number, record in self.file.lines():
                try:
                    key = sample_key(record)
                except (KeyError, TypeError, ValueError) as err:
                    raise ValueError(f"{self.path}:{number}: not a sample record (no {err})") from None
                self.samples.setdefault(key, record)
        except ValueError as err:
            raise DataError(f"{err}; this file was not written by `aha eval`, or was edited: move it away to "
                            "start afresh") from None

    def __contains__(self, key: SampleKey) -> bool:
        return key in self.samples

    def __len__(self) -> int:
        return len(self.samples)

    def append(self, records: Iterable[dict[str, Any]]) -> int:
        """Write the records not yet stored, flushed to disk; returns how many were new."""
        new = {sample_key(r): r for r in records if sample_key(r) not in self.samples}
        self.file.append(*new.values())
        self.samples.update(new)
        return len(new)

    def select(self, benchmark: str, problems: int, k: int) -> list[dict[str, Any]]:
        """The stored samples of ``benchmark`` with problem < ``problems`` and sample < ``k``, in key order."""
        keys = sorted(key for key in self.samples if key[0] == benchmark and key[1] < problems and key[2] < k)
        return [self.samples[key] for key in keys]
