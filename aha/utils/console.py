"""The console every command prints to: standard error, a progress bar on a terminal, one unwrapped line
per record in logs and CI."""

from __future__ import annotations

from rich.console import Console


def make_console(width: int = 200) -> Console:
    console = Console(stderr=True, log_path=False, emoji=False, markup=False, highlight=False)
    if not console.is_terminal:  # logs and CI: one line per record, not wrapped at 80 columns
        console.width = width
    return console
