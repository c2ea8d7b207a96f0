"""The pipeline runner's bookkeeping: the time of an attempt that was killed is counted when the stage resumes."""

import os
import time

import pytest

from aha.pipeline.runner import killed_attempt_seconds


def started_at(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds))


def test_a_killed_attempt_counts_from_its_start_to_its_last_write(tmp_path):
    start = 1_700_000_000.0
    stage = tmp_path / "rl"
    (stage / "checkpoints").mkdir(parents=True)
    writes = {"metrics.jsonl": start + 40, "checkpoints/manifest.json": start + 95, "old.txt": start - 500}
    for name, at in writes.items():
        (stage / name).write_text("x")
        os.utime(stage / name, (at, at))
    killed = {"status": "running", "started": started_at(start), "stopped": None, "error": None, "seconds": 12.0}
    assert killed_attempt_seconds(killed, stage) == pytest.approx(95.0)
    # an attempt that ended any other way already counted its time; one that wrote nothing counts none
    assert killed_attempt_seconds({**killed, "stopped": "interrupted"}, stage) == 0.0
    assert killed_attempt_seconds({**killed, "status": "failed", "error": "ValueError: x"}, stage) == 0.0
    assert killed_attempt_seconds({**killed, "status": "done"}, stage) == 0.0
    assert killed_attempt_seconds({**killed, "started": started_at(start + 1000)}, stage) == 0.0
    assert killed_attempt_seconds(killed, tmp_path / "never-made") == 0.0
