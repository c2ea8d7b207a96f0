"""Fixtures for the data tests: the shared benchmark files (read in place, never copied)."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The folder of real benchmark JSONL files beside the checkout; tests that need it skip without it."""
    if not (SHARED_DATA / "gsm8k.jsonl").is_file():
        pytest.skip(f"{SHARED_DATA}: the shared benchmark files are not there")
    return SHARED_DATA
