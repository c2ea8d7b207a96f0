"""The in-process guards' policy, as pure functions: which audit events are refused, which paths may be
opened, and what a tested function may hand back to the tests."""

import os

import pytest

from aha.rewards.sandbox._harness import event_denied, inside, open_allowed, resolve, sanitise

STDLIB = os.path.realpath(os.path.dirname(os.__file__))
POLICY = {"workdir": "/tmp", "read_roots": (STDLIB,), "allow_fork": True, "pid": 2}
PROCESS_POLICY = dict(POLICY, allow_fork=False)


@pytest.mark.parametrize("event, args, denied", [
    ("sys._getframe", (None,), True), ("sys._current_frames", (), True), ("sys.settrace", (), True),
    ("gc.get_objects", (), True), ("gc.get_referrers", (), True), ("code.__new__", (), True),
    ("ctypes.dlopen", ("libc.so.6",), True), ("socket.__new__", (None, 2, 1, 0), True),
    ("socket.connect", (None, ("1.1.1.1", 80)), True), ("os.exec", ("/bin/sh", [], {}), True),
    ("os.posix_spawn", ("/bin/sh", [], {}), True), ("subprocess.Popen", ("sh", [], None, None), True),
    ("object.__getattr__", (None, "tb_frame"), True), ("object.__getattr__", (None, "gi_frame"), True),
    ("object.__getattr__", (None, "__code__"), False), ("object.__setattr__", (None, "__code__", None), True),
    ("object.__setattr__", (None, "__module__", "x"), False),
    ("import", ("ctypes", None, [], [], []), True), ("import", ("signal", None, [], [], []), True),
    ("import", ("collections", None, [], [], []), False), ("import", ("ctypes.util", None, [], [], []), True),
    ("import", ("posix", None, [], [], []), True), ("import", ("_imp", None, [], [], []), True),
    ("open", ("/tmp/out.txt", "w", 0), False), ("open", ("/etc/passwd", "r", 0), True),
    ("open", (os.path.join(STDLIB, "os.py"), "r", 0), False), ("open", (os.path.join(STDLIB, "os.py"), "w", 0), True),
    ("open", ("/dev/urandom", "rb", 0), False), ("open", (3, "w", 0), False),
    ("open", ("/tmp/../etc/passwd", "r", 0), True), ("open", ("/proc/self/mem", "rb", 0), True),
    ("open", (os.path.join(STDLIB, "site-packages", "numpy", "__init__.py"), "r", 0), True),
    ("os.mkdir", ("/tmp/d", 0o777, None), False), ("os.mkdir", ("/var/tmp/d", 0o777, None), True),
    ("os.rename", ("/tmp/a", "/var/tmp/a", None, None), True), ("os.remove", ("/etc/hosts", None), True),
    ("os.symlink", ("/etc", "/tmp/etc", None), True), ("os.listdir", ("/",), True), ("os.listdir", ("/tmp",), False),
    ("os.kill", (2, 9), False), ("os.kill", (5, 9), False), ("os.kill", (1, 9), True), ("os.kill", (-1, 9), True),
    ("os.killpg", (2, 9), False), ("os.killpg", (0, 9), True), ("os.fork", (), False),
    ("marshal.load", (), True), ("compile", (b"", "x"), False), ("exec", (None,), False),
])
def test_event_policy(event, args, denied):
    assert (event_denied(event, args, POLICY) is not None) is denied


def test_process_isolation_forbids_processes_and_signals():
    assert event_denied("os.fork", (), PROCESS_POLICY)
    assert event_denied("os.kill", (5, 9), PROCESS_POLICY)
    assert event_denied("os.kill", (2, 15), PROCESS_POLICY) is None  # itself


def test_paths():
    assert inside("/tmp/a/b", "/tmp") and inside("/tmp", "/tmp") and not inside("/tmpx", "/tmp")
    assert resolve(5) is None and resolve("/tmp/../etc") == "/etc"
    assert open_allowed("/tmp/x", None, os.O_WRONLY | os.O_CREAT, "/tmp", ())
    assert not open_allowed("/etc/x", None, os.O_RDWR, "/tmp", ("/etc",))
    assert open_allowed("/etc/x", None, os.O_RDONLY, "/tmp", ("/etc",))


class Anything:
    def __eq__(self, other):
        return True


@pytest.mark.parametrize("value", [None, True, 3, 2.5, 1j, "s", b"b", [1, (2, "x")], {"k": {1, 2}}, frozenset({3})])
def test_plain_data_passes_unchanged(value):
    assert sanitise(value) == value and type(sanitise(value)) is type(value)


@pytest.mark.parametrize("value", [Anything(), [1, Anything()], {"k": Anything()}, type("Int", (int,), {})(3),
                                   range(3), iter([1]), lambda: 1])
def test_anything_else_is_refused(value):
    with pytest.raises(TypeError):
        sanitise(value)
