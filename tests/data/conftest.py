"""Fixtures for the data tests: the shared benchmark files (read in place, never copied)."""

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("AHA_DATA_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data")
"""The shared benchmark files: $AHA_DATA_DIR where set, else ``../shared/data`` beside the checkout."""


@pytest.fixture
def shared_data() -> Path:
    """The folder of real benchmark JSONL files; tests that need it skip without it."""
    if not (SHARED_DATA / "gsm8k.jsonl").is_file():
        pytest.skip(f"{SHARED_DATA}: the shared benchmark files are not there")
    return SHARED_DATA
