"""What runs inside the sandboxed process: Python-level guards (an audit hook) and the two ways of running
a program: as a script on stdin/stdout, or followed by assertion tests in its namespace.

Standard library only: this file is executed by a bare ``python -I -S`` interpreter, never imported by
``aha`` at run time except to test its pure functions.

The audit hook is defence in depth behind the kernel's isolation, and the main guard of the verdict of
assertion tests, which run in the same process as the program: it denies every way we know for Python
code to reach another frame's locals (frames, tracebacks' frames, tracers, the garbage collector), native
code (ctypes, forged code objects, marshal), other processes (exec, spawn, signals), the network, and
files outside the working directory.
"""

from __future__ import annotations

import builtins
import gc
import os
import sys

DENIED_EVENTS = frozenset({
    "sys._getframe", "sys._current_frames", "sys._current_exceptions", "sys.settrace", "sys.setprofile",
    "sys.addaudithook", "sys.remote_exec", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
    "code.__new__", "marshal.load", "function.__new__",
    "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.startfile", "subprocess.Popen", "pty.spawn",
    "os.link", "os.symlink", "os.chroot", "os.setuid", "os.setgid", "signal.pthread_kill",
    "mmap.__new__", "sys.monitoring.register_callback",
})
DENIED_PREFIXES = ("ctypes.", "socket.", "_posixsubprocess", "winreg.", "urllib.", "ftplib.", "smtplib.",
                   "http.", "imaplib.", "poplib.", "nntplib.", "telnetlib.", "webbrowser.", "sqlite3.")
FRAME_ATTRS = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back", "f_locals", "f_globals"})
DENIED_MODULES = frozenset({
    "ctypes", "_ctypes", "_posixsubprocess", "subprocess", "signal", "_signal", "socket", "_socket", "ssl",
    "_ssl", "_testcapi", "_testinternalcapi", "_testbuffer", "_testmultiphase", "_testimportmultiple",
    "_testclinic", "_xxsubinterpreters", "_xxinterpchannels", "_xxtestfuzz", "_ctypes_test", "faulthandler",
    "pty", "_tkinter", "tkinter", "_lsprof", "cProfile", "profile", "pdb", "bdb", "_tracemalloc",
    "tracemalloc", "multiprocessing", "_multiprocessing", "_posixshmem", "concurrent", "asyncio", "_asyncio",
})
NO_FRESH_IMPORT = frozenset({"posix", "_imp", "builtins", "sys"})
"""Always loaded; importing them afresh (after deleting them from ``sys.modules``) would bring back what
the guards removed."""
UNAUDITED_FUNCTIONS = ("mkfifo", "mknod")
"""Removed from ``os`` and ``posix`` (whose fresh import is refused, so they cannot come back)."""
PATH_EVENTS = {"os.mkdir": (0,), "os.rmdir": (0,), "os.remove": (0,), "os.rename": (0, 1),
               "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,), "os.truncate": (0,),
               "os.mkfifo": (0,), "os.mknod": (0,), "os.setxattr": (0,), "os.removexattr": (0,),
               "os.chflags": (0,), "os.lchflags": (0,), "shutil.rmtree": (0,)}
LISTING_EVENTS = frozenset({"os.listdir", "os.scandir", "glob.glob", "glob.glob/2"})
PROTECTED_ATTRS = frozenset({"__code__"})
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
PACKAGE_FOLDERS = frozenset({"site-packages", "dist-packages"})
READABLE_DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/full")
PLAIN_TYPES = (type(None), bool, int, float, complex, str, bytes)
HEAPTYPE = 1 << 9
EXIT_PROGRAM_ERROR, EXIT_PROGRAM_EXITED, EXIT_THREADS_LEFT = 70, 71, 72


class SandboxViolation(PermissionError):
    """Raised inside the sandboxed program when it tries something the sandbox forbids."""


class FrameDenied(ValueError):
    """``sys._getframe`` refused: a ValueError, like a call stack that is not deep enough, so that the
    standard library's fallbacks (``namedtuple``, ``typing``, ``enum``) still work."""


class FrameAttributeDenied(AttributeError):
    """A frame attribute (``tb_frame``, ``gi_frame``, ...) refused, as if the object had none."""


def inside(path: str, root: str) -> bool:
    """True when the absolute, normalised ``path`` is ``root`` or below it."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def resolve(path: object) -> str | None:
    """An ``open``-like path argument as an absolute real path; None for file descriptors."""
    if isinstance(path, int):
        return None
    text = os.fsdecode(path)
    return os.path.realpath(text if os.path.isabs(text) else os.path.join(os.getcwd(), text))


def open_allowed(path: object, mode: object, flags: object, workdir: str, read_roots: tuple[str, ...]) -> bool:
    """Reads: the working directory, the read roots (the standard library, less any installed packages in
    it: some reach raw memory) and a few devices. Writes: the working directory only. File descriptors
    (already open) pass."""
    real = resolve(path)
    if real is None:
        return True
    if inside(real, workdir):
        return True
    writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
        (isinstance(flags, int) and bool(flags & WRITE_FLAGS))
    if writing or any(part in PACKAGE_FOLDERS for part in real.split("/")):
        return False
    return real in READABLE_DEVICES or any(inside(real, r) for r in read_roots)


def event_denied(event: str, args: tuple, policy: dict) -> str | None:
    """Why the audit event is refused under ``policy`` (keys: workdir, read_roots, allow_fork, pid), or
    None when it is allowed. A pure function of its arguments, tested directly."""
    if event in DENIED_EVENTS or event.startswith(DENIED_PREFIXES):
        return event
    if event == "object.__getattr__" and len(args) > 1 and args[1] in FRAME_ATTRS:
        return f"access to {args[1]}"
    if event == "object.__setattr__" and len(args) > 1 and args[1] in PROTECTED_ATTRS:
        return f"setting {args[1]}"
    if event in LISTING_EVENTS and args and isinstance(args[0], (str, bytes)) and \
            not open_allowed(args[0], "r", 0, policy["workdir"], policy["read_roots"]):
        return f"{event} {args[0]!r}"
    if event == "import" and args and (str(args[0]).split(".")[0] in DENIED_MODULES
                                       or args[0] in NO_FRESH_IMPORT):
        return f"import {args[0]}"
    if event == "open" and not open_allowed(args[0], args[1] if len(args) > 1 else None,
                                            args[2] if len(args) > 2 else None, policy["workdir"],
                                            policy["read_roots"]):
        return f"open {args[0]!r}"
    if event in PATH_EVENTS:
        for index in PATH_EVENTS[event]:
            real = resolve(args[index])
            if real is not None and not inside(real, policy["workdir"]):
                return f"{event} {args[index]!r}"
        return None
    if event in ("os.fork", "os.forkpty") and not policy["allow_fork"]:
        return event
    if event in ("os.kill", "os.killpg"):
        pid = args[0] if args else 0
        if not (pid == policy["pid"] or (policy["allow_fork"] and event == "os.kill" and pid > 1)):
            return f"{event} {pid}"
    return None


def install_guards(policy: dict) -> None:
    """Add the audit hook (it cannot be removed) and forget the modules the program must not reach."""
    own = ("_isolate", "_harness", "_cases")
    for name in [m for m in sys.modules if m.split(".")[0] in DENIED_MODULES or m in own]:
        del sys.modules[name]
    for module in (sys.modules["posix"], os):  # these two raise no audit event
        for name in UNAUDITED_FUNCTIONS:
            module.__dict__.pop(name, None)
    policy = dict(policy, pid=os.getpid())
    errors = {"sys._getframe": FrameDenied, "object.__getattr__": FrameAttributeDenied}
    violation = SandboxViolation
    trusted_pyc = _pyc_checker(policy["read_roots"])

    def hook(event: str, args: tuple) -> None:
        if event == "marshal.loads":
            reason = None if trusted_pyc(event, args) else "marshal.loads of anything but a standard library .pyc"
        else:
            trusted_pyc(event, args)
            reason = event_denied(event, args, policy)
        if reason is not None:
            raise errors.get(event, violation)(f"sandbox: {reason} is not allowed")

    sys.addaudithook(hook)


def _pyc_checker(read_roots: tuple[str, ...]):
    """Imports unmarshal the standard library's cached bytecode; anything else handed to ``marshal.loads``
    could be forged bytecode. The returned function remembers the last ``.pyc`` opened under the read
    roots, and answers a ``marshal.loads`` event with True only when its data is exactly that file's."""
    state = {"path": None, "busy": False}
    fs_open, fs_read, fs_close = os.open, os.read, os.close

    def check(event: str, args: tuple) -> bool:
        if state["busy"]:
            return True
        if event == "open":
            path = resolve(args[0])
            trusted = path is not None and path.endswith(".pyc") and any(inside(path, r) for r in read_roots)
            state["path"] = path if trusted else None
            return True
        if event != "marshal.loads":
            return True
        path, state["path"] = state["path"], None
        if path is None:
            return False
        state["busy"] = True
        try:
            fd = fs_open(path, os.O_RDONLY)
            chunks = []
            while chunk := fs_read(fd, 1 << 20):
                chunks.append(chunk)
            fs_close(fd)
        except OSError:
            return False
        finally:
            state["busy"] = False
        return bytes(args[0]) == b"".join(chunks)[16:]

    return check


def _fresh_main() -> dict:
    """A new ``__main__`` module for the program (the supervisor's own module disappears from view)."""
    module = type(sys)("__main__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module
    return module.__dict__


def run_script(program: str) -> int:
    """Run ``program`` as ``__main__`` on the process's stdin/stdout; the exit status a script would have."""
    namespace = _fresh_main()
    sys.argv = ["program.py"]
    try:
        exec(compile(program, "program.py", "exec"), namespace)
        status = 0
    except SystemExit as stop:
        status = _exit_status(stop.code)
    except BaseException as err:  # the program's own error: reported like the interpreter would
        sys.__excepthook__(type(err), err, err.__traceback__)
        status = 1
    _flush()
    return status


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    sys.stderr.write(f"{code}\n")
    return 1


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def sanitise(value: object, depth: int = 0) -> object:
    """A copy of a value made only of plain built-in data, or TypeError: a program's function may not hand
    the tests an object of its own (say, one whose ``__eq__`` always answers True)."""
    kind = type(value)
    if depth > 50:
        raise TypeError("return value nested too deeply")
    if kind in PLAIN_TYPES:
        return value
    if kind in (list, tuple, set, frozenset):
        return kind(sanitise(v, depth + 1) for v in value)
    if kind is dict:
        return {sanitise(k, depth + 1): sanitise(v, depth + 1) for k, v in value.items()}
    raise TypeError(f"a tested function returned a {kind.__name__}; only plain data may be returned")


def _guarded(fn, snapshot, settle):
    """Wrap a program function for the tests: whatever it changes in the interpreter while it runs (a
    module's function, a class's method, a built-in, the import machinery) is put back before the tests go
    on, and the tests only ever see plain data from it."""
    clean = sanitise

    def call(*args, **kwargs):
        restore = snapshot()
        try:
            result = fn(*args, **kwargs)
        finally:
            restore()
            settle()
        return clean(result)

    call.__name__ = getattr(fn, "__name__", "candidate")
    call.__doc__ = getattr(fn, "__doc__", None)
    return call


def _test_namespace(namespace: dict, pristine: dict, wrap) -> dict:
    """The names the program defined, as the tests see them: its functions wrapped (see :func:`_guarded`),
    no name that shadows a built-in, built-ins from the untouched copy."""
    names = {}
    function = type(_fresh_main)
    for name, value in namespace.items():
        if name.startswith("__") or name in pristine:
            continue
        names[name] = wrap(value) if type(value) is function else value
    names["__builtins__"] = dict(pristine)
    names["__name__"] = "__main__"
    return names


def run_with_tests(program: str, tests: str, entry_point: str | None, nonce: bytes, verdict_fd: int) -> int:
    """Run ``program``, then ``tests`` over its names (and ``check(entry_point)`` when given). Only when
    every test passed does this write ``nonce`` — which the program never sees — to ``verdict_fd``.

    Everything the verdict depends on is bound to locals before the program runs: the program may replace
    any module attribute or built-in and it changes nothing here. The interpreter state is put back after
    the program and after each call of one of its functions, and the garbage collector is off during the
    tests, so that no finaliser of the program's runs between them."""
    write, exit_, exec_, compile_ = os.write, os._exit, exec, compile
    thread_count = sys.modules["_thread"]._count
    snapshot, collect, settle = _snapshot, gc.collect, gc.disable
    pristine = dict(builtins.__dict__)
    restore = snapshot()
    namespace = _fresh_main()
    try:
        exec_(compile_(program, "program.py", "exec"), namespace)
    except SystemExit:
        exit_(EXIT_PROGRAM_EXITED)
    except BaseException as err:
        sys.__excepthook__(type(err), err, err.__traceback__)
        exit_(EXIT_PROGRAM_ERROR)
    if thread_count():
        exit_(EXIT_THREADS_LEFT)
    restore()
    collect()
    settle()
    wrap = lambda fn: _guarded(fn, snapshot, settle)  # noqa: E731
    test_names = _test_namespace(namespace, pristine, wrap)
    try:
        exec_(compile_(tests, "tests.py", "exec"), test_names)
        if entry_point:
            test_names["check"](wrap(namespace[entry_point]))
    except BaseException as err:
        pristine["print"](f"{type(err).__name__}: {err}", file=sys.__stderr__)
        _flush()
        exit_(1)
    if thread_count():
        exit_(EXIT_THREADS_LEFT)
    _flush()
    write(verdict_fd, nonce)
    exit_(0)


def _snapshot():
    """Record the interpreter state the tests rely on; the returned function puts it back (built-ins,
    the modules loaded before the program, the import machinery, the standard streams)."""
    modules = dict(sys.modules)
    contents = {name: dict(m.__dict__) for name, m in modules.items() if name not in ("sys", "__main__")}
    builtins_dict = dict(builtins.__dict__)
    lists = {name: list(getattr(sys, name)) for name in ("meta_path", "path_hooks", "path")}
    callbacks = list(gc.callbacks)
    streams = {name: getattr(sys, name) for name in ("stdin", "stdout", "stderr", "displayhook", "excepthook")}
    importer_cache = dict(sys.path_importer_cache)
    classes = _class_contents(modules)
    setattr_, getattr_ = setattr, getattr

    def restore() -> None:
        for name in [n for n in sys.modules if n not in modules]:
            del sys.modules[name]
        sys.modules.update(modules)
        for name, saved in contents.items():
            module_dict = modules[name].__dict__
            module_dict.clear()
            module_dict.update(saved)
        builtins.__dict__.clear()
        builtins.__dict__.update(builtins_dict)
        for name, saved in lists.items():
            getattr_(sys, name)[:] = saved
        for name, saved in streams.items():
            setattr_(sys, name, saved)
        sys.path_importer_cache.clear()
        sys.path_importer_cache.update(importer_cache)
        gc.callbacks[:] = callbacks
        _restore_classes(classes)

    return restore


def _class_contents(modules: dict) -> list[tuple[type, dict]]:
    """The attributes of every class defined in Python by an already loaded module (the import machinery's
    finders and loaders among them): a program could patch their methods."""
    found = []
    for name, module in modules.items():
        for value in list(vars(module).values()):
            if type(value) is type and value.__flags__ & HEAPTYPE and value.__module__ == name:
                found.append((value, dict(value.__dict__)))
    return found


def _restore_classes(classes: list[tuple[type, dict]]) -> None:
    for cls, saved in classes:
        current = dict(cls.__dict__)
        for key in current.keys() - saved.keys():
            delattr(cls, key)
        for key, value in saved.items():
            if current.get(key) is not value and key not in ("__dict__", "__weakref__"):
                setattr(cls, key, value)
