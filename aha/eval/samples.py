"""``samples.jsonl``: every graded sample of an evaluation, appended as it is graded, and what makes an
evaluation resumable.

Each line is one sample, keyed by (benchmark, problem index, sample index). A killed evaluation leaves
at most one partly written last line; reopening the file drops that line (it is produced again) and
remembers every complete sample, so a re-run generates only the missing ones and never duplicates one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from aha.data.readers import DataError

SampleKey = tuple[str, int, int]


def sample_key(record: dict[str, Any]) -> SampleKey:
    return (str(record["benchmark"]), int(record["problem"]), int(record["sample"]))


class SampleStore:
    """Append-only JSONL of graded samples, deduplicated by key."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.samples: dict[SampleKey, dict[str, Any]] = {}
        self.dropped_partial_line = False
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        end = raw.rfind(b"\n") + 1
        if end < len(raw):  # a line cut short by a kill: drop it, it will be produced again
            self.dropped_partial_line = True
            with self.path.open("r+b") as f:
                f.truncate(end)
        for number, line in enumerate(raw[:end].split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = sample_key(record)
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
                raise DataError(f"{self.path}:{number}: not a sample record ({err}); this file was not written by "
                                "`aha eval`, or was edited: move it away to start afresh") from None
            self.samples.setdefault(key, record)

    def __contains__(self, key: SampleKey) -> bool:
        return key in self.samples

    def __len__(self) -> int:
        return len(self.samples)

    def append(self, records: Iterable[dict[str, Any]]) -> int:
        """Write the records not yet stored, flushed to disk; returns how many were new."""
        new = [r for r in records if sample_key(r) not in self.samples]
        if not new:
            return 0
        with self.path.open("a", encoding="utf-8") as f:
            for record in new:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                self.samples[sample_key(record)] = record
            f.flush()
            os.fsync(f.fileno())
        return len(new)

    def select(self, benchmark: str, problems: int, k: int) -> list[dict[str, Any]]:
        """The stored samples of ``benchmark`` with problem < ``problems`` and sample < ``k``, in key order."""
        keys = sorted(key for key in self.samples if key[0] == benchmark and key[1] < problems and key[2] < k)
        return [self.samples[key] for key in keys]
