"""math-verify behind a hard deadline that works from any thread and any process.

math-verify bounds its own time with ``signal.alarm``, which only works in a process's main thread (from
another thread it raises), and cannot interrupt work inside C code. :class:`MathVerifier` instead sends
each pair to a long-lived worker process (``_math_worker.py``, started with ``subprocess``, so it also works
from daemonic worker processes, which may not have ``multiprocessing`` children) and waits at most
``timeout`` seconds per pair; a worker that runs past it is killed and restarted, and that pair alone is
unscored.

    >>> MathVerifier().equal_many([("\\\\frac12", "0.5"), ("3", "4")])
    [True, False]
"""

from __future__ import annotations

import json
import math
import os
import re
import selectors
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

WORKER = Path(__file__).with_name("_math_worker.py")
STARTUP_SECONDS = 60.0
_PLAIN_NUMBER = re.compile(r"^[+-]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$|^[+-]?\.\d+$")


_ARITHMETIC = re.compile(r"[\d)}]\s*(?:\*\*|[-+*×·÷^]|\\times|\\cdot|\\div)[-+({\s]*(?:\d|\\d?frac|\\sqrt)")


def unevaluated(answer: str) -> bool:
    """True when ``answer`` still holds arithmetic between numbers (``8 + 2 - 7``, ``2 \\times 3``, ``2^{10}``)
    after its last ``=``: the work restated, not its result. math-verify evaluates such an expression and
    finds it equal to the value, so a policy that copies the question into its answer tag would be paid for
    it; against a plain-number gold answer it is wrong. Fractions (``3/4``, ``\\frac{3}{4}``) and signs are
    values."""
    return bool(_ARITHMETIC.search(answer.rsplit("=", 1)[-1]))


def plain_number(text: str) -> Fraction | None:
    """``text`` as an exact number when it is a plain decimal (``42``, ``-0.50``, ``1,000``), else None."""
    text = text.strip()
    if not _PLAIN_NUMBER.match(text):
        return None
    return Fraction(text.replace(",", ""))


class _Worker:
    """One worker process and the lock that gives it to one batch at a time."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.owner = os.getpid()

    def start(self) -> None:
        # -P: the script's own folder (which holds aha's math.py) must not shadow the standard library
        command = [sys.executable, "-P", "-u", str(WORKER), str(max(1, math.ceil(self.timeout)))]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)
        if self._readline(STARTUP_SECONDS) != "ready":
            self.stop()
            raise RuntimeError("the math-verify worker did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def _readline(self, seconds: float) -> str | None:
        """The next line from the worker, or None if none comes within ``seconds``."""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(seconds):
                return None
        line = self.proc.stdout.readline()
        return line.strip() if line else None

    def run(self, pairs: list[tuple[int, str, str]], results: list, reasons: dict) -> None:
        """Verify ``(index, pred, gold)`` pairs one by one; each gets ``timeout`` seconds."""
        with self.lock:
            if self.owner != os.getpid():  # a forked copy: the worker's pipes belong to the parent process
                self.proc, self.owner = None, os.getpid()
            for index, pred, gold in pairs:
                if self.proc is None or self.proc.poll() is not None:
                    try:
                        self.start()
                    except (OSError, RuntimeError) as err:
                        reasons[index] = f"math-verify worker unavailable: {err}"
                        continue
                self.proc.stdin.write(json.dumps({"id": index, "pred": pred, "gold": gold}) + "\n")
                self.proc.stdin.flush()
                line = self._readline(self.timeout + 1.0)
                if line is None:
                    self.stop()
                    reasons[index] = f"math-verify timed out after {self.timeout:g} s"
                    continue
                answer = json.loads(line)
                results[index] = answer["equal"]
                if answer.get("error"):
                    reasons[index] = f"math-verify failed: {answer['error']}"


class MathVerifier:
    """Compares answers with math-verify in ``workers`` worker processes, ``timeout`` seconds per pair."""

    def __init__(self, timeout: float = 5.0, workers: int = 1):
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.timeout = timeout
        self._workers = [_Worker(timeout) for _ in range(workers)]

    def equal_many(self, pairs: list[tuple[str, str]], reasons: dict[int, str] | None = None) -> list[bool | None]:
        """For each ``(pred, gold)``: True/False, or None when verification timed out or crashed (why, in
        ``reasons[index]`` when a dict is given). Identical strings and equal plain numbers are decided
        here, without a round trip, and so is an answer that is arithmetic still to be done against a
        plain-number gold answer (:func:`unevaluated`: not equal)."""
        results: list[bool | None] = [None] * len(pairs)
        pending = []
        for i, (pred, gold) in enumerate(pairs):
            a, b = plain_number(pred), plain_number(gold)
            if pred.strip() == gold.strip():
                results[i] = True
            elif a is not None and b is not None:
                results[i] = a == b
            elif b is not None and unevaluated(pred):
                results[i] = False
            else:
                pending.append((i, pred, gold))
        reasons = {} if reasons is None else reasons
        chunks = [pending[k::len(self._workers)] for k in range(len(self._workers))]
        threads = [threading.Thread(target=worker.run, args=(chunk, results, reasons))
                   for worker, chunk in zip(self._workers, chunks) if chunk]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    def close(self) -> None:
        for worker in self._workers:
            with worker.lock:
                worker.stop()


_DEFAULT: dict[tuple[float, int], MathVerifier] = {}
_DEFAULT_LOCK = threading.Lock()


def shared_verifier(timeout: float = 5.0, workers: int = 1) -> MathVerifier:
    """One verifier per (timeout, workers), shared by every caller in the process."""
    with _DEFAULT_LOCK:
        key = (float(timeout), int(workers))
        if key not in _DEFAULT:
            _DEFAULT[key] = MathVerifier(timeout, workers)
        return _DEFAULT[key]

