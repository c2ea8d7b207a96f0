"""Stopping cleanly: the first SIGINT or SIGTERM asks the work in progress to finish its current unit (a
training step, the requests in flight, a batch) and stop; a second one stops at once.

Stopping at once is safe too: checkpoints and summaries are written whole or not at all, and a resumed run
cuts its logs back to its checkpoint.

    with GracefulStop(console) as stop:
        for step in ...:
            ...
            if stop.requested:
                break
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class GracefulStop:
    """Catches SIGINT and SIGTERM while the block runs (only in the main thread; elsewhere it never fires)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, console: Any = None, what: str = "the current step"):
        self.console = console
        self.what = what
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested:  # the second signal: stop now
            self.__exit__()
            raise KeyboardInterrupt(f"{name} again: stopped at once")
        self.requested, self.signal_name = True, name
        if self.console is not None:
            self.console.log(f"{name}: stopping after {self.what} (send it again to stop at once)")
