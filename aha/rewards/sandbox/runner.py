"""Run untrusted Python programs locally, isolated and bounded: the parent side of the sandbox.

Each worker owns a fork server: a bare interpreter (``python -I -S -B``, no site-packages, scrubbed
environment, its own session) on ``_supervisor.py``, which builds the worker's sandbox once (namespaces, a
private read-only root, no privileges) and runs each test case there as a new process with its own
limits (see that file and ``docs/rewards.md`` for the threat model). Runs go in parallel, one worker per
core.

    >>> sandbox = Sandbox()
    >>> [run] = sandbox.run_stdio("print(int(input()) * 2)", ["21"])
    >>> run.status, run.stdout
    ('ok', '42\\n')
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import subprocess
import sys
import tempfile
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

try:
    from ._frames import read_frame, write_frame
except ImportError:  # this file loaded by its path alone: the folder needs nothing but the standard library
    import importlib.util

    _spec = importlib.util.spec_from_file_location("_aha_sandbox_frames", Path(__file__).with_name("_frames.py"))
    _frames = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_frames)
    read_frame, write_frame = _frames.read_frame, _frames.write_frame

log = logging.getLogger(__name__)

SUPERVISOR = Path(__file__).with_name("_supervisor.py")
ISOLATIONS = ("auto", "namespaces", "process")
UID_RANGE = (1_800_000_000, 1_900_000_000)
"""Dedicated uids for runs started as root: unused by anything else, so RLIMIT_NPROC counts only the run."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per test case limits (each case is a fresh process)."""

    cpu_seconds: float = 2.0
    """CPU time (RLIMIT_CPU, rounded up to whole seconds)."""
    wall_seconds: float = 5.0
    """Wall-clock time, enforced by the supervisor, which then kills every process of the run."""
    memory_mb: int = 512
    """Address space (RLIMIT_AS)."""
    processes: int = 16
    """Processes and threads of the sandbox's user (RLIMIT_NPROC); with namespaces, or under root."""
    open_files: int = 64
    """Open file descriptors (RLIMIT_NOFILE)."""
    output_bytes: int = 1 << 20
    """Largest stdout / stderr / file (RLIMIT_FSIZE); reaching it fails the case."""
    tmpfs_mb: int = 64
    """Size of the private ``/tmp`` working directory (with namespaces)."""

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"sandbox limit {name} must be a positive number, got {value!r}")
        if self.open_files < 8:
            raise ValueError("sandbox limit open_files must be at least 8")

    def as_job(self) -> dict:
        return {"cpu_seconds": float(self.cpu_seconds), "wall_seconds": float(self.wall_seconds),
                "memory_bytes": int(self.memory_mb) << 20, "processes": int(self.processes),
                "open_files": int(self.open_files), "output_bytes": int(self.output_bytes),
                "tmpfs_bytes": int(self.tmpfs_mb) << 20}


@dataclass
class CaseRun:
    """What one test case's process did, as observed by the harness (never as claimed by the program)."""

    status: str
    """ok (exit 0), error (non-zero exit), timeout (wall clock), cpu_limit, output_limit, killed (by a
    signal) or sandbox_error (the sandbox itself failed; see ``stderr``)."""
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    verified: bool = False
    """Assertion tests only: the harness confirmed that every test ran and passed."""
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    max_rss_kb: int = 0


@dataclass
class Job:
    """One sandbox run: a program with stdin cases (``mode="stdio"``) or assertion tests (``"assert"``)."""

    program: str
    mode: str = "stdio"
    inputs: list[str] = field(default_factory=lambda: [""])
    tests: str = ""
    entry_point: str | None = None


class Sandbox:
    """Runs jobs in isolated processes, ``workers`` at a time.

    isolation: ``namespaces`` (kernel namespaces, a private read-only root, no network; needs root or
    unprivileged user namespaces), ``process`` (resource limits, a dedicated uid under root, and the
    Python-level guards only) or ``auto`` (namespaces where they work, else process, with a warning).
    python_guards: the in-process audit hook; turning it off is for testing the kernel layer alone.
    """

    def __init__(self, limits: SandboxLimits | None = None, workers: int | None = None, isolation: str = "auto",
                 python: str | None = None, python_guards: bool = True):
        if isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}")
        if isolation == "process" and not python_guards:
            raise ValueError("python_guards=False needs isolation='namespaces': without namespaces the guards "
                             "are what contains the program")
        self.limits = limits or SandboxLimits()
        self.workers = workers or os.cpu_count() or 1
        self.python = python or getattr(sys, "_base_executable", None) or sys.executable
        self.python_guards = python_guards
        self._isolation = isolation
        self._warned: set[str] = set()
        self._start_workers()

    def _start_workers(self) -> None:
        """Fork servers and worker threads of this process (a forked copy of the sandbox makes its own)."""
        self._pid = os.getpid()
        self._servers: queue.Queue[_ForkServer] = queue.Queue()
        for _ in range(self.workers):
            self._servers.put(_ForkServer(self.python))
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="aha-sandbox")
        self._finalizer = weakref.finalize(self, _stop_servers, self._servers)

    # --- public API --------------------------------------------------------------------------------------
    def run_stdio(self, program: str, inputs: Iterable[str]) -> list[CaseRun]:
        """Run ``program`` once per input on stdin; one result per input, outputs not yet compared."""
        return self.run(Job(program, "stdio", list(inputs)))

    def run_tests(self, program: str, tests: str, entry_point: str | None = None) -> CaseRun:
        """Run ``program`` then the assertion code ``tests`` in its namespace (and ``check(entry_point)``)."""
        return self.run(Job(program, "assert", [""], tests, entry_point))[0]

    def run(self, job: Job) -> list[CaseRun]:
        """Run one job in the calling thread."""
        if self._pid != os.getpid():
            self._start_workers()
        isolation = self.isolation
        runs = self._run_once(job, isolation)
        if self._isolation == "auto" and isolation == "namespaces":
            if not _setup_failed(runs):
                self._isolation = "namespaces"
                return runs
            if not self.python_guards:  # process isolation without the guards contains nothing: never that
                self._isolation = "namespaces"
                log.error("sandbox: kernel namespaces are unavailable (%s) and python_guards=False; every run "
                          "is refused", runs[0].stderr)
                return runs
            log.warning("sandbox: kernel namespaces are unavailable (%s); falling back to process isolation "
                        "(resource limits and Python-level guards only)", runs[0].stderr)
            self._isolation = "process"
            runs = self._run_once(job, "process")
        return runs

    def map(self, jobs: Iterable[Job]) -> list[list[CaseRun]]:
        """Run many jobs in parallel (``workers`` at a time); results in the order of ``jobs``."""
        if self._pid != os.getpid():  # forked: the parent's threads and servers are not ours
            self._start_workers()
        jobs = list(jobs)
        if jobs and self._isolation == "auto":
            self.run(Job("pass"))  # settle the isolation mode once, before the parallel runs
        return list(self._pool.map(self.run, jobs))

    @property
    def isolation(self) -> str:
        return "namespaces" if self._isolation == "auto" else self._isolation

    def close(self) -> None:
        """Stop the worker threads and the fork servers (also done when the sandbox is garbage collected
        or this process exits)."""
        self._pool.shutdown(wait=True)
        self._finalizer()

    # --- one run -----------------------------------------------------------------------------------------
    def _run_once(self, job: Job, isolation: str) -> list[CaseRun]:
        nonce = secrets.token_hex(16).encode()
        payload = {"isolation": isolation, "mode": job.mode, "program": job.program, "tests": job.tests,
                   "entry_point": job.entry_point, "nonce": nonce, "limits": self.limits.as_job(),
                   "guards": self.python_guards, "cases": [{"stdin": text} for text in job.inputs],
                   "deadline": 5.0 + len(job.inputs) * (self.limits.wall_seconds + 1.0)}
        server = self._servers.get()
        try:
            result, reason = server.request(payload, payload["deadline"] + 5.0)
        finally:
            self._servers.put(server)
        if result is None or result.get("error"):
            reason = (result or {}).get("error") or reason or "no result"
            return [CaseRun("sandbox_error", stderr=reason) for _ in job.inputs]
        for warning in set(result.get("warnings", [])) - self._warned:
            self._warned.add(warning)
            log.warning("sandbox: %s", warning)
        return [_case_run(case, job.mode, nonce, self.limits) for case in result["cases"]]


class _ForkServer:
    """One ``_supervisor.py`` process, started on first use and again whenever it died or was killed."""

    def __init__(self, python: str):
        self.python = python
        self.proc: subprocess.Popen | None = None
        self._owner = os.getpid()
        self.uid = secrets.SystemRandom().randrange(*UID_RANGE)

    def request(self, payload: dict, seconds: float) -> tuple[dict | None, str]:
        """Send one job; its result, or None and why (the server is then killed and restarted next time)."""
        if self._owner != os.getpid():  # inherited through fork: the server's pipes are the parent's
            self.proc = None
        if self.proc is None or self.proc.poll() is not None:
            self.stop()
            self._start()
        try:
            write_frame(self.proc.stdin.fileno(), dict(payload, uid=self.uid))
            frame = read_frame(self.proc.stdout.fileno(), time.monotonic() + seconds)
        except (BrokenPipeError, OSError) as err:
            frame, why = None, f"sandbox server failed: {err}"
        else:
            why = f"the sandbox did not answer within {seconds:.0f} s"
        if frame is None:
            self.stop(graceful=False)
            return None, why
        return frame, ""

    def _start(self) -> None:
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TMPDIR": tempfile.gettempdir()}
        self.proc = subprocess.Popen([self.python, "-I", "-S", "-B", str(SUPERVISOR)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd="/",
                                     start_new_session=True, close_fds=True)
        self._owner = os.getpid()

    def stop(self, graceful: bool = True) -> None:
        """Close the server's input: it tears its sandbox down (deleting its folder) and exits; kill it if it
        has not within a few seconds, or at once when not ``graceful`` (its sandbox dies with it: PDEATHSIG)."""
        if self._owner == os.getpid() and self.proc is not None and self.proc.poll() is None:
            try:
                if not graceful:
                    raise subprocess.TimeoutExpired(self.python, 0)
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                _kill_session(self.proc.pid)  # not yet reaped: the group id cannot have been reused
                self.proc.wait()
        self.proc = None


def _stop_servers(servers: queue.Queue) -> None:
    for server in list(servers.queue):
        server.stop()


def _case_run(case: dict, mode: str, nonce: bytes, limits: SandboxLimits) -> CaseRun:
    """Classify one case from what the supervisor observed."""
    code, sig = case["exit_code"], case["signal"]
    if case["timed_out"]:
        status = "timeout"
    elif case["output_truncated"]:
        status = "output_limit"
    elif sig is not None:
        status = "cpu_limit" if sig in (24, 9) and case["cpu_seconds"] >= limits.cpu_seconds - 0.05 else "killed"
    else:
        status = "ok" if code == 0 else "error"
    verified = mode == "assert" and status == "ok" and case["verdict"] == nonce
    return CaseRun(status, code, sig, case["stdout"].decode(errors="replace"),
                   case["stderr"].decode(errors="replace"), verified, case["cpu_seconds"],
                   case["wall_seconds"], case["max_rss_kb"])


def _setup_failed(runs: list[CaseRun]) -> bool:
    return bool(runs) and runs[0].status == "sandbox_error" and (
        "namespaces unavailable" in runs[0].stderr or "sandbox setup failed" in runs[0].stderr)


def _kill_session(pid: int) -> None:
    """Kill the supervisor's whole process group (it is a session leader, so its pid is the group id)."""
    try:
        os.killpg(pid, 9)
    except (ProcessLookupError, PermissionError):
        pass
