"""H, the in-sandbox runner, and C, the process of one test case. Standard library only, and never ctypes:
this module runs in a freshly executed interpreter (see ``_supervisor.py``), so that no process that runs
untrusted code has ever loaded a module whose classes can read raw memory.

H reads jobs (an 8-byte length, then marshal data) on fd 3 and writes results on fd 4. For each case it
forks C, which sets up its descriptors, limits and guards and becomes the program; H waits for C under
the wall-clock deadline, kills every process the case left behind, empties the working directory and
reads C's output from memory files that C cannot see once it has exited.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import sys
import time

import _harness
from _frames import read_frame as _read_frame, write_frame as _write_frame

JOB_FD, RESULT_FD = 3, 4
MAX_FD = 1024
EXIT_SETUP_FAILED = 70
PRELOAD = ("bisect", "collections", "functools", "heapq", "itertools", "math", "operator", "re", "string", "types")
"""Imported once by H, so that each case inherits them (``types`` must be: importing it reads a frame).
Not ``random``: every case would inherit the same seed."""


def main() -> None:
    """H's entry point; ``sys.argv[1]`` is the sandbox's settings as JSON (workdir, namespaces, ...)."""
    settings = json.loads(sys.argv[1])
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as init, H then ignores every signal sent from inside
    for name in PRELOAD:
        __import__(name)
    _write_frame(RESULT_FD, {"ready": True})
    while True:
        job = _read_frame(JOB_FD)
        if job is None:
            return
        cases = [run_case(job, case, settings) for case in job["cases"]]
        _write_frame(RESULT_FD, {"error": None, "cases": cases, "warnings": settings.get("warnings", [])})


def _memfd(name: str, data: bytes = b"") -> int:
    fd = os.memfd_create(name)
    if data:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    return fd


def run_case(job: dict, case: dict, settings: dict) -> dict:
    """Fork C for one case, wait for it under the wall-clock deadline, clean up, collect its output."""
    limits, workdir = job["limits"], settings["workdir"]
    fds = {"stdin": _memfd("stdin", case.get("stdin", "").encode()), "stdout": _memfd("stdout"),
           "stderr": _memfd("stderr"), "verdict": _memfd("verdict")}
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(job, fds, settings)
    os.close(fds["stdin"])
    timed_out = _wait_for(pid, limits["wall_seconds"], settings["namespaces"])
    _, status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - start
    if settings["namespaces"]:
        kill_all_others()
    empty(workdir)
    out, truncated = _read(fds["stdout"], limits["output_bytes"])
    err, _ = _read(fds["stderr"], limits["output_bytes"])
    verdict, _ = _read(fds["verdict"], 256)
    return {"exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "timed_out": timed_out, "stdout": out, "stderr": err, "verdict": verdict,
            "output_truncated": truncated, "wall_seconds": wall,
            "cpu_seconds": usage.ru_utime + usage.ru_stime, "max_rss_kb": usage.ru_maxrss}


def _wait_for(pid: int, seconds: float, namespaces: bool) -> bool:
    """Wait until C exits or ``seconds`` pass; on time-out kill it (with namespaces: every process in the
    namespace but H). True when it timed out."""
    pidfd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if poller.poll(max(1, int(seconds * 1000))):
            return False
    finally:
        os.close(pidfd)
    os.kill(-1 if namespaces else pid, signal.SIGKILL)
    return True


def kill_all_others() -> None:
    """From the PID namespace's init: SIGKILL every other process in the namespace, then reap them all."""
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def empty(directory: str) -> None:
    """Delete everything a case left in the working directory, so that the next case starts fresh."""
    for entry in os.scandir(directory):
        if entry.is_dir(follow_symlinks=False):
            os.chmod(entry.path, 0o700)
            empty(entry.path)
            os.rmdir(entry.path)
        else:
            os.unlink(entry.path)


def _read(fd: int, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of a memfd, and whether it reached the limit."""
    size = os.fstat(fd).st_size
    data = os.pread(fd, min(size, limit), 0) if size else b""
    os.close(fd)
    return data, size >= limit


def set_limits(limits: dict, processes: bool) -> None:
    """Resource limits of the process that runs untrusted code (soft = hard, so they cannot be raised)."""
    cpu = max(1, int(-(-limits["cpu_seconds"] // 1)))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"], limits["open_files"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["output_bytes"], limits["output_bytes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if processes:
        resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"], limits["processes"]))


def _child(job: dict, fds: dict, settings: dict) -> None:
    """C: descriptors 0-2 become the case's stdin/stdout/stderr and 3 the verdict, every other descriptor
    (H's pipes among them) is closed; then limits, guards, and the program. Never returns."""
    try:
        if settings["namespaces"]:
            os.setsid()  # its own session: no signal to a group reaches H's session (R, outside)
        for target, name in enumerate(("stdin", "stdout", "stderr", "verdict")):
            os.dup2(fds[name], target)
        os.closerange(4, MAX_FD)
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False)
        os.chdir(settings["workdir"])
        set_limits(job["limits"], settings["count_processes"])
        if job["guards"]:
            policy = {"workdir": settings["workdir"], "read_roots": tuple(settings["read_roots"]),
                      "allow_fork": settings["namespaces"]}
            _harness.install_guards(policy)
    except BaseException as err:
        os.write(2, f"sandbox child setup failed: {err}\n".encode())
        os._exit(EXIT_SETUP_FAILED)
    if job["mode"] == "stdio":
        os._exit(_harness.run_script(job["program"]))
    _harness.run_with_tests(job["program"], job["tests"], job["entry_point"], job["nonce"], 3)
    os._exit(EXIT_SETUP_FAILED)
