"""The sandbox's fork server Z: ``python -I -S -B _supervisor.py`` reads jobs on stdin and writes results
on stdout, each frame an 8-byte length then marshal data. Standard library only.

Z keeps one sandbox alive and hands it one job at a time; it builds a new one when the settings change,
after a job runs past its deadline, or when the sandbox died. Process tree, with namespaces::

    aha (parent) ── Z: this file, one per worker; relays jobs and enforces each job's deadline
                     └─ R: own session; unshares the user (when not root), mount, PID, network, IPC and
                        UTS namespaces, forks P and waits
                          └─ P: PID 1 of the new PID namespace: builds the private root file system,
                             drops every privilege, then executes a fresh interpreter on ``_cases.py``: H
                               └─ C, one per test case, forked by H: limits, guards, the program

Everything that runs untrusted code descends from H, a freshly executed image that never loads ctypes
(whose classes read any address; Z, R and P need it for the system calls). H is the namespace's init: it
cannot be killed from inside, and when it dies every process of the sandbox dies with it. Each process
also dies with its parent (PDEATHSIG). Without namespaces ("process" isolation) R drops its privileges and
becomes H itself, and the audit hook also forbids creating processes.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import stat
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _isolate  # noqa: E402
from _frames import read_frame as _read_frame, write_frame as _write_frame  # noqa: E402

JOB_FD, RESULT_FD = 3, 4
STARTUP_SECONDS = 30.0


def serve() -> int:
    """Z: answer jobs until stdin closes."""
    sandbox: dict = {}
    while True:
        job = _read_frame(0)
        if job is None:
            _teardown(sandbox)
            return 0
        _write_frame(1, _handle(job, sandbox))


def _handle(job: dict, sandbox: dict) -> dict:
    """Run ``job`` in the current sandbox (building one first if needed); an error result on failure."""
    key = (job["isolation"], job["uid"], job["limits"]["tmpfs_bytes"])
    if sandbox.get("key") != key or not _alive(sandbox):
        _teardown(sandbox)
        job = dict(job, root=tempfile.mkdtemp(prefix="aha-sandbox-"))
        sandbox["root"] = job["root"]
        error = _build(job, sandbox)
        if error is not None:
            _teardown(sandbox)
            return {"error": error}
        sandbox["key"] = key
    request = {k: job[k] for k in ("mode", "program", "tests", "entry_point", "nonce", "guards", "limits", "cases")}
    try:
        _write_frame(sandbox["job_fd"], request)
    except OSError:
        result = None
    else:
        result = _read_frame(sandbox["result_fd"], time.monotonic() + job["deadline"])
    if result is None:
        _teardown(sandbox)
        return {"error": f"the sandbox did not finish within {job['deadline']:.0f} s"}
    return result


def _alive(sandbox: dict) -> bool:
    if not sandbox or sandbox.get("reaped"):
        return False
    if os.waitpid(sandbox["pid"], os.WNOHANG) == (0, 0):
        return True
    sandbox["reaped"] = True
    return False


def _build(job: dict, sandbox: dict) -> str | None:
    """Fork R with a pipe each way; wait for H's first frame. None when ready, else why not."""
    job_read, job_write = os.pipe()
    result_read, result_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            os.close(job_write)
            os.close(result_read)
            code = _sandbox_process(job, job_read, result_write)
        finally:
            os._exit(code)
    os.close(job_read)
    os.close(result_write)
    sandbox.update(pid=pid, job_fd=job_write, result_fd=result_read)
    first = _read_frame(result_read, time.monotonic() + STARTUP_SECONDS)
    if first is None:
        return "the sandbox did not start"
    return None if first.get("ready") else first.get("error", "the sandbox did not start")


def _teardown(sandbox: dict) -> None:
    """Kill the sandbox's whole session (R's; with namespaces, H's death takes every case with it), and
    delete its folder on the host (with namespaces it is an empty mount point there)."""
    if "pid" not in sandbox:
        if sandbox.get("root"):
            shutil.rmtree(sandbox["root"], ignore_errors=True)
        sandbox.clear()
        return
    if not sandbox.get("reaped"):
        try:
            os.killpg(sandbox["pid"], signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        os.waitpid(sandbox["pid"], 0)
    os.close(sandbox["job_fd"])
    os.close(sandbox["result_fd"])
    shutil.rmtree(sandbox["root"], ignore_errors=True)
    sandbox.clear()


def _sandbox_process(job: dict, job_fd: int, result_fd: int) -> int:
    """R: a new session, the pipes moved to fds 3 and 4, then namespaces (or not) and H."""
    os.setsid()
    _isolate.prctl(_isolate.PR_SET_PDEATHSIG, signal.SIGKILL)
    devnull = os.open("/dev/null", os.O_RDWR)
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (devnull, job_fd, result_fd)]  # above 0-4
    for target, fd in ((0, moved[0]), (1, moved[0]), (2, moved[0]), (JOB_FD, moved[1]), (RESULT_FD, moved[2])):
        os.dup2(fd, target)  # the copies at 0-4 are inherited by H, the originals are not
    os.closerange(RESULT_FD + 1, 1024)
    if job["isolation"] != "namespaces":
        return _start_runner(job, namespaces=False)
    try:
        _isolate.enter_namespaces()
    except OSError as err:
        return _fail(f"namespaces unavailable: {err}")
    pid = os.fork()
    if pid == 0:
        os._exit(_start_runner(job, namespaces=True))
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _start_runner(job: dict, namespaces: bool) -> int:
    """P (or R without namespaces): build the file system view, drop privileges, execute H."""
    try:
        settings = _prepare(job, namespaces)
        harness = _isolate.HARNESS_MOUNT if namespaces else HERE
        boot = f"import sys; sys.path.insert(0, {harness!r}); import _cases; _cases.main()"
        env = {"PATH": "/usr/bin:/bin", "HOME": settings["workdir"], "TMPDIR": settings["workdir"],
               "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
        os.execve(sys.executable, [sys.executable, "-I", "-S", "-B", "-c", boot, json.dumps(settings)], env)
    except BaseException as err:  # report the setup failure to Z instead of dying silently
        return _fail(f"sandbox setup failed: {type(err).__name__}: {err}")
    return 3


def _prepare(job: dict, namespaces: bool) -> dict:
    """Everything privileged, done before H starts; returns H's settings."""
    uid = gid = job["uid"] if os.geteuid() == 0 else None
    stdlib = os.path.dirname(os.__file__)
    warnings = []
    _isolate.prctl(_isolate.PR_SET_PDEATHSIG, signal.SIGKILL)
    if namespaces:
        owner = (uid, gid) if uid is not None else (os.getuid(), os.getgid())
        _isolate.build_root(job["root"], sys.base_prefix, stdlib, HERE, job["limits"]["tmpfs_bytes"], owner)
        workdir = "/tmp"
    else:
        workdir = job["root"]
        if uid is not None:
            os.chown(workdir, uid, gid)
    keep_reading = not namespaces and uid is not None and not _others_can_read(stdlib)
    if keep_reading:
        warnings.append(f"{stdlib} is not readable by other users: the sandbox's uid keeps CAP_DAC_READ_SEARCH")
    os.chdir(workdir)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _isolate.drop_privileges(uid, gid, keep_reading)
    return {"workdir": workdir, "namespaces": namespaces, "count_processes": namespaces or uid is not None,
            "read_roots": [os.path.realpath(stdlib)], "warnings": warnings}


def _others_can_read(path: str) -> bool:
    """True when a user other than the owner can reach ``path`` (every folder on the way searchable)."""
    path = os.path.realpath(path)
    while True:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def _fail(reason: str) -> int:
    _write_frame(RESULT_FD, {"error": reason})
    return 3


if __name__ == "__main__":
    sys.exit(serve())
