import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Converted models go to a per-session cache unless AHA_CACHE is set by the caller."""
    if "AHA_CACHE" not in os.environ:
        monkeypatch.setenv("AHA_CACHE", str(tmp_path_factory.getbasetemp() / "aha-cache"))
