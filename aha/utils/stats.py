"""Summary statistics of plain lists, as logged in metrics (None where there is nothing to summarise)."""

from __future__ import annotations

import math
from typing import Iterable


def mean(values: Iterable[float]) -> float | None:
    """Arithmetic mean; None for no values."""
    values = list(values)
    return sum(values) / len(values) if values else None


def std(values: Iterable[float]) -> float | None:
    """Sample standard deviation (n - 1); 0.0 for a single value, None for none."""
    values = list(values)
    if not values:
        return None
    if len(values) < 2:
        return 0.0
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def standard_error(values: Iterable[float]) -> float | None:
    """Standard error of the mean (sample standard deviation / sqrt(n)); None below two values."""
    values = list(values)
    if len(values) < 2:
        return None
    return std(values) / math.sqrt(len(values))
