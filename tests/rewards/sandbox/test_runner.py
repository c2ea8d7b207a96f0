"""The sandbox end to end: ordinary programs work, and every attack is contained, scores nothing and leaves
the machine as it was (no stray process, no file written outside) while this test process survives.

The attacks run under three configurations: the default (kernel namespaces + Python guards), the kernel
layer alone (guards off), and the fallback without namespaces (process isolation)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from aha.rewards.sandbox import Job, Sandbox, SandboxLimits
from tests.rewards.sandbox import attacks

LIMITS = SandboxLimits(cpu_seconds=1, wall_seconds=1.5, memory_mb=256, output_bytes=64 * 1024, processes=16)
ATTACKS = ["FORK_BOMB", "MEMORY_BOMB", "INFINITE_LOOP", "BUSY_CHILD", "WRITE_OUTSIDE", "READ_SECRET",
           "NETWORK", "KILL_PARENT", "HUGE_OUTPUT", "SPECIAL_FILES"]
CONFIGS = {"default": {}, "kernel_only": {"python_guards": False}, "process": {"isolation": "process"}}
KERNEL_ONLY_SKIP = {"MEMORY_BOMB", "INFINITE_LOOP", "HUGE_OUTPUT"}  # limits, not guards: covered by default


def _command_lines() -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, command line) of every process."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    command = f.read()
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            found[int(entry)] = (parent, command)
    return found


def sandbox_processes(*_ignored) -> set[int]:
    """Processes left by runs: every process of the sandbox's runner image (``_cases``) whose parent is one
    too. What remains between runs is one fork server, its sandbox process and the runner H per worker."""
    table = _command_lines()
    return {pid for pid, (parent, command) in table.items()
            if b"_cases" in command and b"_cases" in table.get(parent, (0, b""))[1]}


@pytest.fixture(scope="module")
def sandboxes():
    made = {name: Sandbox(LIMITS, workers=2, **options) for name, options in CONFIGS.items()}
    yield made
    for sandbox in made.values():
        sandbox.close()


@pytest.fixture
def host(tmp_path):
    """A world-writable directory, a readable secret file and a listening port, all outside the sandbox."""
    target = tmp_path / "target"
    target.mkdir()
    target.chmod(0o777)
    secret = tmp_path / "secret.txt"
    token = f"TOKEN-{os.getpid()}-{time.time_ns()}"
    secret.write_text(token)
    secret.chmod(0o644)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.setblocking(False)
    yield {"target": target, "secret": secret, "token": token, "server": server,
           "fields": {"target": target, "secret": secret, "port": server.getsockname()[1], "pid": os.getpid()}}
    server.close()


def _assert_contained(runs, host, before: set[int], sandbox: Sandbox) -> None:
    assert runs and all(run.status != "sandbox_error" for run in runs), runs
    for run in runs:
        assert host["token"] not in run.stdout + run.stderr
        assert "wrote" not in run.stdout and "made" not in run.stdout, run.stdout
    assert sorted(p.name for p in host["target"].iterdir()) == []
    assert not os.path.exists("/var/tmp/aha-sandbox-pwned") and not os.path.exists("/dev/shm/aha-sandbox-pwned")
    assert not (host["target"].parent.parent / "aha-pwned").exists()
    with pytest.raises(BlockingIOError):
        host["server"].accept()
    assert sandbox_processes(sandbox) - before == set()


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_is_contained(sandboxes, host, config, attack):
    if config == "kernel_only" and attack in KERNEL_ONLY_SKIP:
        pytest.skip("resource limits do not depend on the Python guards")
    sandbox = sandboxes[config]
    if config in ("default", "kernel_only"):
        assert sandbox.isolation == "namespaces"
    before = sandbox_processes()
    program = "print('attack started', flush=True)\n" + getattr(attacks, attack).format(**host["fields"])
    runs = sandbox.run_stdio(program, [""])
    _assert_contained(runs, host, before, sandbox)
    assert runs[0].stdout.startswith("attack started"), runs  # the attack did run
    # judged as a stdin/stdout case expecting some other output, it scores nothing
    assert not (runs[0].status == "ok" and runs[0].stdout.strip() == "expected")
    if attack in ("INFINITE_LOOP", "FORK_BOMB"):
        assert runs[0].status in ("timeout", "cpu_limit")
    if attack == "HUGE_OUTPUT":
        assert runs[0].status == "output_limit" and len(runs[0].stdout) <= LIMITS.output_bytes
    if attack == "MEMORY_BOMB":
        assert runs[0].status == "error" and "MemoryError" in runs[0].stderr
        assert runs[0].max_rss_kb < LIMITS.memory_mb * 1024


@pytest.mark.parametrize("config", ["default", "process"])
@pytest.mark.parametrize("attack", ["EXIT_BEFORE_TESTS", "HARD_EXIT_BEFORE_TESTS", "OVERRIDE_BUILTINS",
                                    "SHADOW_BUILTINS", "ALWAYS_EQUAL", "PATCH_HARNESS", "THREAD_LEFT"])
def test_tests_cannot_be_faked(sandboxes, config, attack):
    before = sandbox_processes()
    tests = attacks.TESTS_FOR.get(attack, attacks.TESTS)
    program = "print('attack started', flush=True)\n" + getattr(attacks, attack).format()
    run = sandboxes[config].run_tests(program, tests, "solve")
    assert run.status != "sandbox_error", run
    assert run.stdout.startswith("attack started"), run  # the attack did run
    assert not run.verified, run
    assert sandbox_processes(sandboxes[config]) - before == set()
    if attack == "PATCH_HARNESS":
        for name in ("frame", "gc", "ctypes", "tb_frame", "settrace", "marshal", "signal", "_signal", "harness",
                     "main"):
            assert f"'{name}: done'" not in run.stdout, run.stdout


@pytest.mark.parametrize("config", ["default", "process"])
def test_patching_modules_from_the_tested_function_changes_nothing(sandboxes, config):
    sandbox = sandboxes[config]
    assert not sandbox.run_tests(attacks.PATCH_DURING_TESTS, attacks.TESTS_USING_MODULES, "solve").verified
    honest = "def solve(x):\n    return x * 2\n"
    assert sandbox.run_tests(honest, attacks.TESTS_USING_MODULES, "solve").verified


@pytest.mark.parametrize("config", ["default", "process"])
def test_honest_solutions_pass(sandboxes, config):
    sandbox = sandboxes[config]
    assert sandbox.run_tests("def solve(x):\n    return x * 2\n", attacks.TESTS, "solve").verified
    assert not sandbox.run_tests("def solve(x):\n    return x * 3\n", attacks.TESTS, "solve").verified
    runs = sandbox.run_stdio("import sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)\n",
                             ["1 2", "40 2"])
    assert [(r.status, r.stdout) for r in runs] == [("ok", "3\n"), ("ok", "42\n")]


def test_standard_library_works_inside(sandboxes):
    program = """
import collections, dataclasses, enum, fractions, functools, hashlib, heapq, itertools, json, math, re, typing
Point = collections.namedtuple("Point", "x y")
@dataclasses.dataclass
class Box:
    side: int
class Colour(enum.Enum):
    RED = 1
print(Point(1, 2).x + Box(3).side, Colour.RED.name, fractions.Fraction(1, 3) * 3, hashlib.md5(b"a").hexdigest()[:6])
with open("scratch.txt", "w") as f:
    f.write("kept in the temporary directory")
print(open("scratch.txt").read())
"""
    [run] = sandboxes["default"].run_stdio(program, [""])
    assert run.status == "ok", run.stderr
    assert run.stdout.splitlines() == ["4 RED 1 0cc175", "kept in the temporary directory"]


def test_each_run_gets_a_fresh_directory(sandboxes):
    sandbox = sandboxes["default"]
    write = "import os\nprint(sorted(os.listdir('.')))\nopen('left-behind', 'w').write('x')\nos.mkdir('d')\n"
    first, second = sandbox.run_stdio(write, ["", ""])  # two cases of one job
    [third] = sandbox.run_stdio(write, [""])  # another job
    assert first.stdout == second.stdout == third.stdout == "[]\n"


def test_limits_are_validated():
    with pytest.raises(ValueError, match="cpu_seconds"):
        SandboxLimits(cpu_seconds=0)
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxLimits(memory_mb="lots")
    with pytest.raises(ValueError, match="isolation"):
        Sandbox(isolation="docker")


def test_runs_in_parallel(sandboxes):
    from aha.rewards.sandbox import Job

    sandbox = sandboxes["default"]
    start = time.perf_counter()
    results = sandbox.map([Job("import time\ntime.sleep(0.5)\nprint('done')")] * 4)
    elapsed = time.perf_counter() - start
    assert [runs[0].stdout for runs in results] == ["done\n"] * 4
    assert elapsed < 1.9  # two workers: two rounds of 0.5 s, not four


UNPRIVILEGED = """
import importlib.util, json, os, sys
spec = importlib.util.spec_from_file_location("runner", sys.argv[1])
runner = importlib.util.module_from_spec(spec)
sys.modules["runner"] = runner
spec.loader.exec_module(runner)
sandbox = runner.Sandbox(runner.SandboxLimits(wall_seconds=1.5, cpu_seconds=1), workers=1, python=sys.executable,
                         isolation="namespaces", python_guards=sys.argv[2] == "guards")
runs = [sandbox.run_stdio(code, [""])[0] for code in (
    "import os\\nprint(os.getuid(), sorted(os.listdir('/tmp')))",
    "import os\\nwhile True:\\n    try: os.fork()\\n    except Exception: pass",
    "import os\\nos.kill(%d, 9)" % os.getpid(),
    "open(%r, 'w').write('x')" % sys.argv[3])]
verified = sandbox.run_tests("def f(x):\\n    return x + 1", "assert f(1) == 2").verified
sandbox.close()
print(json.dumps({"statuses": [r.status for r in runs], "first": runs[0].stdout.strip(), "verified": verified}))
"""


@pytest.mark.parametrize("guards", ["guards", "kernel_only"])
def test_unprivileged_user_gets_the_same_isolation(tmp_path, guards):
    """A normal user (uid 1000 here, through user namespaces): same containment, same verdicts."""
    import shutil
    import subprocess

    runner_path = Path(__file__).resolve().parents[3] / "aha" / "rewards" / "sandbox" / "runner.py"
    python = shutil.which("python3", path="/usr/bin:/bin")
    if os.geteuid() != 0 or not shutil.which("setpriv") or python is None:
        pytest.skip("needs root, setpriv and a system python3 to become an unprivileged user")
    probe = subprocess.run(["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", python, "-c",
                            f"open({str(runner_path)!r}).read()"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("the checkout is not readable by an unprivileged user")
    target = tmp_path / "pwned"
    tmp_path.chmod(0o777)
    done = subprocess.run(["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", python, "-c", UNPRIVILEGED,
                           str(runner_path), guards, str(target)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == {"statuses": ["ok", "timeout", "error", "error"], "first": "1000 []", "verified": True}
    assert not target.exists()


def test_native_code_is_out_of_reach(sandboxes):
    """No class that reads raw memory is reachable, and no hidden extension module loads by its path."""
    [run] = sandboxes["default"].run_stdio(attacks.NATIVE_CODE, [""])
    assert run.status == "ok", run.stderr
    assert "ctypes classes: []" in run.stdout and "loaded" not in run.stdout, run.stdout


@pytest.mark.parametrize("config", list(CONFIGS))
def test_installed_packages_are_out_of_reach(sandboxes, config):
    """Packages installed next to the standard library (numpy can read raw memory) cannot be imported."""
    [run] = sandboxes[config].run_stdio(attacks.INSTALLED_PACKAGES, [""])
    assert run.status == "ok", run.stderr
    assert "imported" not in run.stdout, run.stdout


_INHERITED: list[Sandbox] = []


def _map_in_child() -> list[str]:
    from aha.rewards.sandbox import Job

    return [runs[0].stdout for runs in _INHERITED[0].map([Job("print(7)")] * 3)]


def test_a_forked_process_gets_its_own_workers(sandboxes):
    """A sandbox inherited through fork (a data-loader worker, a process pool) still runs jobs."""
    import multiprocessing

    sandbox = sandboxes["default"]
    sandbox.map([Job("print(1)")] * 2)  # the parent's threads and servers exist
    _INHERITED[:] = [sandbox]
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_map_in_child).get(timeout=60) == ["7\n"] * 3
    assert sandbox.run_stdio("print(8)", [""])[0].stdout == "8\n"  # the parent's are untouched


def test_a_package_installed_under_tmp_keeps_the_namespaces(tmp_path, monkeypatch):
    """A checkout (or virtual environment) under /tmp: the harness's folder must not collide with the
    sandbox's own /tmp, and the working directory must still start empty."""
    import shutil

    from aha.rewards.sandbox import runner

    if not str(tmp_path.resolve()).startswith("/tmp/"):
        pytest.skip("the temporary folder is not under /tmp here")
    copy = tmp_path / "checkout" / "sandbox"
    shutil.copytree(runner.SUPERVISOR.parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    copy.chmod(0o755)
    monkeypatch.setattr(runner, "SUPERVISOR", copy / "_supervisor.py")
    sandbox = Sandbox(LIMITS, workers=1, isolation="namespaces")
    try:
        [run] = sandbox.run_stdio("import os\nprint(int(input()) + 1, sorted(os.listdir('.')))", ["41"])
    finally:
        sandbox.close()
    assert (run.status, run.stdout) == ("ok", "42 []\n"), run


def test_without_namespaces_unguarded_runs_are_refused_not_run_bare(monkeypatch):
    """python_guards=False means the kernel layer alone; where namespaces fail, runs must not fall back to
    process isolation without the guards (nothing would contain them)."""
    from aha.rewards.sandbox import runner

    monkeypatch.setattr(runner, "_setup_failed", lambda runs: True)  # as if namespaces had failed
    sandbox = Sandbox(LIMITS, workers=1, python_guards=False)
    try:
        sandbox.run_stdio("print(1)", [""])
        assert sandbox.isolation == "namespaces"
        sandbox.run_stdio("print(2)", [""])
        assert sandbox.isolation == "namespaces"
    finally:
        sandbox.close()
