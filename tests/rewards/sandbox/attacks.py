"""Hostile programs for the sandbox tests: each tries to escape, damage the machine, or fake a pass.

Templates take ``{target}`` (a host directory outside the sandbox, world-writable), ``{secret}`` (a
readable host file holding a token), ``{port}`` (a host TCP port listening on 127.0.0.1) and ``{pid}``
(the test process)."""

FORK_BOMB = """
import os
while True:
    try:
        os.fork()
    except Exception:
        pass
"""

MEMORY_BOMB = """
hoard = []
while True:
    hoard.append(bytearray(50 * 1024 * 1024))
"""

INFINITE_LOOP = """
while True:
    pass
"""

BUSY_CHILD = """
import os
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while True:
            pass
    while True:
        pass
print("parent leaves")
"""

WRITE_OUTSIDE = """
import os
for path in ["{target}/pwned", "/var/tmp/aha-sandbox-pwned", "/dev/shm/aha-sandbox-pwned", "{target}/../aha-pwned"]:
    try:
        with open(path, "w") as f:
            f.write("pwned")
        print("wrote", path)
    except Exception as err:
        print("refused", path, err)
try:
    os.mkdir("{target}/pwned-dir")
except Exception as err:
    print("refused mkdir", err)
try:
    os.symlink("{target}", "escape")
    open("escape/pwned-link", "w").write("x")
except Exception as err:
    print("refused link", err)
"""

READ_SECRET = """
import os
for path in ["{secret}", "/etc/shadow", "/proc/1/environ", "/proc/self/mem"]:
    try:
        print(open(path, errors="replace").read(200))
    except Exception as err:
        print("refused", path, err)
try:
    print(os.listdir("{target}"))
except Exception as err:
    print("refused listdir", err)
"""

NETWORK = """
import socket
s = socket.create_connection(("127.0.0.1", {port}), timeout=1)
s.sendall(b"leak")
print("connected")
"""

KILL_PARENT = """
import os
for pid in (os.getppid(), {pid}, 1):
    for sig in (9, 15, 2):
        try:
            os.kill(pid, sig)
        except Exception as err:
            print("refused", pid, sig, err)
try:
    os.killpg(0, 9)
except Exception as err:
    print("refused killpg", err)
try:
    os.kill(-1, 9)
except Exception as err:
    print("refused kill -1", err)
print("still here")
"""

HUGE_OUTPUT = """
import sys
line = "x" * 10000
while True:
    sys.stdout.write(line)
"""

EXIT_BEFORE_TESTS = "import sys\nsys.exit(0)\n"
HARD_EXIT_BEFORE_TESTS = "import os\nos._exit(0)\n"

OVERRIDE_BUILTINS = """
import builtins
builtins.abs = lambda x: 0
builtins.all = lambda x: True
builtins.AssertionError = type("Quiet", (Exception,), {{}})
def solve(x):
    return -1
"""

SHADOW_BUILTINS = """
def abs(x):
    return 0
def all(x):
    return True
def solve(x):
    return -1
"""

ALWAYS_EQUAL = """
class Anything:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
def solve(x):
    return Anything()
"""

PATCH_HARNESS = """
import os, sys
attempts = []
def attempt(name, action):
    try:
        action()
        attempts.append(name + ": done")
    except BaseException as err:
        attempts.append(name + ": " + type(err).__name__)
attempt("frame", lambda: sys._getframe(1).f_locals)
attempt("gc", lambda: __import__("gc").get_objects())
attempt("ctypes", lambda: __import__("ctypes"))
attempt("traceback", lambda: (1 / 0))
try:
    1 / 0
except ZeroDivisionError as err:
    attempt("tb_frame", lambda: err.__traceback__.tb_frame)
attempt("settrace", lambda: sys.settrace(lambda *a: None))
attempt("marshal", lambda: __import__("marshal").loads(__import__("marshal").dumps(compile("1", "x", "eval"))))
attempt("signal", lambda: __import__("signal"))
attempt("_signal", lambda: sys.modules["_signal"])
attempt("harness", lambda: sys.modules["_harness"])
attempt("main", lambda: sys.modules["__main__"].run_with_tests)
attempt("fake verdict", lambda: os.write(3, b"0" * 32))
os._exit = lambda *a: None
os.write = lambda *a: None
sys.exit = lambda *a: None
sys.modules["builtins"].exec = lambda *a, **k: None
sys.modules["builtins"].compile = lambda *a, **k: None
print(attempts)
def solve(x):
    return -1
"""

THREAD_LEFT = """
import threading, time
threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
def solve(x):
    return x * 2
"""

TESTS = """
def check(candidate):
    assert abs(candidate(2) - 4) < 1e-9
    assert candidate(3) == 6
    assert all([candidate(0) == 0, candidate(1) == 2])
"""

TESTS_BUILTINS = """
def check(candidate):
    assert abs(candidate(2) - 4) < 1e-9
    assert all([candidate(0) == 0, candidate(1) == 2])
"""
TESTS_EQUAL = """
def check(candidate):
    assert candidate(3) == 6
    assert candidate(0) == 0
"""
TESTS_FOR = {"OVERRIDE_BUILTINS": TESTS_BUILTINS, "SHADOW_BUILTINS": TESTS_BUILTINS, "ALWAYS_EQUAL": TESTS_EQUAL}
"""Tests each of these attacks would pass if the sandbox did not stop it (the others use TESTS)."""

NATIVE_CODE = """
import os, sys
found = []
todo, seen = list(object.__subclasses__()), set()
while todo:
    cls = todo.pop()
    if cls in seen:
        continue
    seen.add(cls)
    if cls.__name__ in ("c_char_p", "_SimpleCData", "CDLL", "_CData"):
        found.append(cls.__name__)
    try:
        todo.extend(cls.__subclasses__())
    except TypeError:
        pass
print("ctypes classes:", found)
import importlib.machinery as machinery, importlib.util as util
for name in ("_ctypes", "_testcapi", "_posixsubprocess", "_socket"):
    path = os.path.join(os.path.dirname(os.__file__), "lib-dynload", name + machinery.EXTENSION_SUFFIXES[0])
    try:
        loader = machinery.ExtensionFileLoader(name, path)
        loader.create_module(util.spec_from_loader(name, loader))
        print("loaded", name)
    except BaseException as err:
        print("refused", name, type(err).__name__)
"""

PATCH_DURING_TESTS = """
import math
def solve(x):
    math.isclose = lambda *a, **k: True
    math.fabs = lambda v: 0.0
    import builtins, collections
    builtins.abs = lambda v: 0
    collections.Counter.__eq__ = lambda self, other: True
    return -1
"""

TESTS_USING_MODULES = """
import math, collections
def check(candidate):
    value = candidate(2)  # called first: the module attributes are looked up after it has run
    assert math.isclose(value, 4)
    assert math.fabs(value - 4) < 1e-9
    assert collections.Counter([value]) == collections.Counter([4])
"""

INSTALLED_PACKAGES = """
import os, sys
packages = os.path.join(os.path.dirname(os.__file__), "site-packages")
sys.path.append(packages)
try:
    print("listing:", os.listdir(packages))
except Exception as err:
    print("refused listing", type(err).__name__)
for name in ("numpy", "pip", "cffi"):
    try:
        __import__(name)
        print("imported", name)
    except Exception as err:
        print("refused", name, type(err).__name__)
"""

SPECIAL_FILES = """
import os, stat, sys
attempts = {{
    "block device": lambda: os.mknod("disk", stat.S_IFBLK | 0o600, os.makedev(8, 0)),
    "fifo outside": lambda: os.mkfifo("{target}/fifo"),
    "posix.mknod": lambda: sys.modules["posix"].mknod("disk2", stat.S_IFBLK | 0o600, os.makedev(8, 0)),
}}
for name, attempt in attempts.items():
    try:
        attempt()
        print("made", name)
    except BaseException as err:
        print("refused", name, type(err).__name__)
try:
    del sys.modules["posix"]
    import posix
    posix.mknod("disk3", stat.S_IFBLK | 0o600, os.makedev(8, 0))
    print("made fresh posix device")
except BaseException as err:
    print("refused fresh posix", type(err).__name__)
"""
