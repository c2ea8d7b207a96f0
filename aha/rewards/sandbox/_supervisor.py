"""The sandbox's supervisor: ``python -I -S -B _supervisor.py`` is a small fork server (Z) that reads jobs
on stdin and writes results on stdout, each frame an 8-byte length then marshal data. Standard library
only. Z has everything imported once, so a run costs forks, not an interpreter start.

Process tree of one job, with namespaces (the default where the kernel allows them)::

    aha (parent) ── Z: fork server, one per worker; forks R per job and enforces the job's deadline
                     └─ R: own session; unshares the namespaces, forks P and waits
                          └─ P: PID 1 of the new PID namespace: builds the root file system, drops every
                             privilege, then for each test case forks C, waits for it with a wall-clock
                             deadline, kills whatever is left in the namespace, and reads C's output
                               └─ C: limits, file descriptors, then exec: a fresh interpreter that
                                  installs the audit hook and runs the untrusted program (_harness.py)

P is trusted and never runs untrusted code; as the namespace's init it cannot be killed from inside,
and it is not dumpable, so C cannot read its memory. Each process dies with its parent (PDEATHSIG).
Without namespaces ("process" isolation), R is P, and the audit hook also forbids creating processes.
"""

from __future__ import annotations

import marshal
import os
import select
import signal
import stat
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _isolate  # noqa: E402

MAX_FD = 1024
EXIT_SETUP_FAILED = 70


def serve() -> int:
    """Z: answer jobs until stdin closes."""
    while True:
        job = _read_frame(0)
        if job is None:
            return 0
        result = _run_forked(job)
        _write_all(1, len(result).to_bytes(8, "big") + result)


def _read_frame(fd: int) -> dict | None:
    header = _read_exactly(fd, 8)
    if header is None:
        return None
    return marshal.loads(_read_exactly(fd, int.from_bytes(header, "big")) or b"")


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _run_forked(job: dict) -> bytes:
    """Fork R for the job; its result (marshal bytes), or an error result past the job's deadline."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        code = 3
        try:
            os.setsid()
            _isolate.prctl(_isolate.PR_SET_PDEATHSIG, signal.SIGKILL)
            devnull = os.open("/dev/null", os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(write_end, 1)
            code = run_job(job)
        finally:
            os._exit(code)
    os.close(write_end)
    data = _collect(read_end, job["deadline"])
    if data is None:
        _kill_group(pid, reap=False)
    os.close(read_end)
    os.waitpid(pid, 0)
    return data or marshal.dumps({"error": f"the sandbox did not finish within {job['deadline']:.0f} s"})


def _collect(fd: int, seconds: float) -> bytes | None:
    """Everything written to ``fd`` until it closes; None if that takes longer than ``seconds``."""
    deadline = time.monotonic() + seconds
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(int(left * 1000) + 1):
            return None
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def run_job(job: dict) -> int:
    """R: run one job and write its result to fd 1."""
    if job["isolation"] != "namespaces":
        return supervise(job, namespaces=False)
    try:
        _isolate.enter_namespaces()
    except OSError as err:
        return _emit({"error": f"namespaces unavailable: {err}"})
    pid = os.fork()
    if pid == 0:
        os._exit(_guarded_supervise(job))
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _guarded_supervise(job: dict) -> int:
    try:
        return supervise(job, namespaces=True)
    except BaseException as err:  # report the setup failure to the parent instead of dying silently
        return _emit({"error": f"sandbox setup failed: {type(err).__name__}: {err}"})


def supervise(job: dict, namespaces: bool) -> int:
    """Set up the sandbox (see module docstring), run every case, write the result."""
    limits, uid, gid = job["limits"], job.get("uid"), job.get("gid")
    stdlib = os.path.dirname(os.__file__)
    warnings = []
    if os.geteuid() != 0:
        uid = gid = None
    if namespaces:
        _isolate.prctl(_isolate.PR_SET_PDEATHSIG, signal.SIGKILL)
        owner = (uid, gid) if uid is not None else (os.getuid(), os.getgid())
        _isolate.build_root(job["root"], sys.base_prefix, stdlib, HERE, limits["tmpfs_bytes"], owner)
        workdir = "/tmp"
    else:
        workdir = job["root"]
        if uid is not None and not _others_can_read(stdlib):
            warnings.append(f"staying root: {stdlib} is not readable by an unprivileged user")
            uid = gid = None
        if uid is not None:
            os.chown(workdir, uid, gid)
        os.chdir(workdir)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _isolate.drop_privileges(uid, gid)
    policy = {"workdir": workdir, "read_roots": (os.path.realpath(stdlib),), "allow_fork": namespaces}
    count_processes = namespaces or uid is not None
    cases = [_run_case(job, case, policy, namespaces, count_processes) for case in job["cases"]]
    return _emit({"error": None, "cases": cases, "warnings": warnings})


def _others_can_read(path: str) -> bool:
    """True when a user other than the owner can reach and read ``path`` (every parent searchable)."""
    path = os.path.realpath(path)
    while True:
        mode = os.stat(path).st_mode
        if not mode & stat.S_IXOTH:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def _memfd(name: str, data: bytes = b"") -> int:
    fd = os.memfd_create(name)
    if data:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _run_case(job: dict, case: dict, policy: dict, namespaces: bool, count_processes: bool) -> dict:
    """Fork C for one case, wait for it under the wall-clock deadline, clean up, collect its output."""
    limits = job["limits"]
    fds = {"stdin": _memfd("stdin", case.get("stdin", "").encode()), "stdout": _memfd("stdout"),
           "stderr": _memfd("stderr"), "verdict": _memfd("verdict")}
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(job, fds, policy, count_processes)
    os.close(fds["stdin"])
    timed_out = _wait_for(pid, limits["wall_seconds"], namespaces)
    _, status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - start
    if namespaces:
        _isolate.kill_all_others()
    _empty(policy["workdir"])
    out, truncated = _read(fds["stdout"], limits["output_bytes"])
    err, _ = _read(fds["stderr"], limits["output_bytes"])
    verdict, _ = _read(fds["verdict"], 256)
    return {"exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "timed_out": timed_out, "stdout": out, "stderr": err, "verdict": verdict,
            "output_truncated": truncated, "wall_seconds": wall,
            "cpu_seconds": usage.ru_utime + usage.ru_stime, "max_rss_kb": usage.ru_maxrss}


def _wait_for(pid: int, seconds: float, namespaces: bool) -> bool:
    """Wait until C exits or ``seconds`` pass; on time-out kill it (with namespaces: everything in the
    namespace). True when it timed out."""
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


def _kill_group(pgid: int, reap: bool = True) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if reap:
        _isolate.reap()


def _empty(directory: str) -> None:
    """Delete everything a case left in the working directory, so that the next case starts fresh."""
    for entry in os.scandir(directory):
        if entry.is_dir(follow_symlinks=False):
            os.chmod(entry.path, 0o700)
            _empty(entry.path)
            os.rmdir(entry.path)
        else:
            os.unlink(entry.path)


def _read(fd: int, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of a memfd, and whether it reached the limit."""
    size = os.fstat(fd).st_size
    data = os.pread(fd, min(size, limit), 0) if size else b""
    os.close(fd)
    return data, size >= limit


def _child(job: dict, fds: dict, policy: dict, count_processes: bool) -> None:
    """C: sets up its descriptors, directory and limits, then executes a fresh interpreter on the harness
    (``_harness.main``). The fresh image matters: this one has ctypes loaded (for the namespaces), whose
    classes can read any address; the harness's image never loads it. Never returns."""
    try:
        _isolate.prctl(_isolate.PR_SET_PDEATHSIG, signal.SIGKILL)
        request = {key: job.get(key) for key in ("mode", "program", "tests", "entry_point", "nonce", "guards")}
        request["policy"] = policy
        fds["request"] = _memfd("request", marshal.dumps(request))
        for target, name in enumerate(("stdin", "stdout", "stderr", "request", "verdict")):
            os.dup2(fds[name], target)
        os.closerange(5, MAX_FD)
        os.chdir(policy["workdir"])
        _isolate.set_limits(job["limits"], count_processes)
        env = {"PATH": "/usr/bin:/bin", "HOME": policy["workdir"], "TMPDIR": policy["workdir"],
               "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
        boot = f"import sys; sys.path.insert(0, {HERE!r}); import _harness; _harness.main()"
        os.execve(sys.executable, [sys.executable, "-I", "-S", "-B", "-c", boot], env)
    except BaseException as err:
        os.write(2, f"sandbox child setup failed: {err}\n".encode())
    os._exit(EXIT_SETUP_FAILED)


def _emit(result: dict) -> int:
    _write_all(1, marshal.dumps(result))
    return 0 if result.get("error") is None else 3


if __name__ == "__main__":
    sys.exit(serve())
