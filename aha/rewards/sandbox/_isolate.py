"""Kernel-level isolation for one sandbox run (runs inside the sandbox interpreter; standard library only).

``enter_namespaces`` moves the process into new user (when not root), mount, PID, network, IPC and UTS
namespaces; ``build_root`` then replaces the file system with a minimal read-only view (the Python
installation, ``/usr``, a few device nodes) and a fresh size-capped ``tmpfs`` at ``/tmp`` mounted
``noexec``; ``drop_privileges`` leaves the process with no capabilities and, under root, a dedicated
unprivileged uid. Everything here is called by trusted code before any untrusted code runs.
"""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_KEEPCAPS, PR_SET_NO_NEW_PRIVS = 1, 4, 8, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_DAC_READ_SEARCH = 47, 2, 2
SYSCALLS = {"x86_64": {"pivot_root": 155, "capset": 126}, "aarch64": {"pivot_root": 41, "capset": 91}}
DEVICES = ("null", "zero", "full", "random", "urandom")
HIDDEN_MODULES = ("_ctypes", "_ctypes_test", "_posixsubprocess", "_testcapi", "_testinternalcapi",
                  "_testbuffer", "_testmultiphase", "_testimportmultiple", "_testclinic", "_xxsubinterpreters",
                  "_xxinterpchannels", "_xxtestfuzz", "_socket", "_ssl")
"""Extension modules replaced by an empty file inside the sandbox: loading them by path (which raises no
audit event) fails."""

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _syscall(name: str, *args) -> int:
    number = SYSCALLS.get(os.uname().machine, {}).get(name)
    if number is None:
        raise OSError(f"{name}: unsupported architecture {os.uname().machine}")
    return _check(_libc.syscall(number, *args), name)


def prctl(option: int, value: int, extra: int = 0) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(value), ctypes.c_ulong(extra), 0, 0), f"prctl {option}")


def enter_namespaces() -> bool:
    """Unshare every namespace; returns True when a user namespace was needed (not running as root).
    The caller must fork afterwards: its children are the first processes of the new PID namespace."""
    uid, gid = os.geteuid(), os.getegid()
    user = uid != 0
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | (CLONE_NEWUSER if user else 0)
    _check(_libc.unshare(flags), "unshare")
    if user:  # keep the same uid inside; capabilities are dropped before untrusted code runs
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    return user


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _locked_flags(path: str) -> int:
    """The mount flags a bind remount must keep (a user namespace may not clear them)."""
    f = os.statvfs(path).f_flag
    return (MS_NOSUID if f & os.ST_NOSUID else 0) | (MS_NODEV if f & os.ST_NODEV else 0) | \
        (MS_NOEXEC if f & os.ST_NOEXEC else 0)


def _bind_readonly(source: str, target: str) -> None:
    _mount(source, target, None, MS_BIND | MS_REC)
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | _locked_flags(source))


def _mirror(root: str, path: str) -> None:
    """Make ``path`` (absolute, on the host) appear read-only at the same place under ``root``."""
    target = root + path
    if os.path.islink(path):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.lexists(target):
            os.symlink(os.readlink(path), target)
        return
    if os.path.isdir(path):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _bind_readonly(path, target)


HARNESS_MOUNT = "/.aha-harness"
"""Where the harness's folder appears inside the sandbox (wherever the package is installed on the host,
a checkout under /tmp included)."""


def visible_paths(python_prefix: str) -> list[str]:
    """Host paths the sandbox sees at the same place, read-only: the Python installation and the system
    libraries."""
    paths = ["/usr", "/bin", "/lib", "/lib64", "/lib32", "/libx32", "/etc/ld.so.cache", "/etc/localtime"]
    prefix = os.path.realpath(python_prefix)
    if prefix == "/tmp" or prefix.startswith("/tmp/"):
        raise OSError(f"the Python installation is under /tmp ({prefix}), where the sandbox has its own "
                      "working directory")
    if not any(prefix == p or prefix.startswith(p + "/") for p in paths):
        paths.append(prefix)
    return [p for p in paths if os.path.lexists(p)]


def build_root(root: str, python_prefix: str, stdlib: str, harness_dir: str, tmpfs_bytes: int,
               owner: tuple[int, int]) -> None:
    """Turn the empty host directory ``root`` into the process's whole file system (see module doc); the
    harness's folder appears at ``HARNESS_MOUNT``."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=8m,mode=0755")
    for path in visible_paths(python_prefix):
        _mirror(root, path)
    os.makedirs(root + HARNESS_MOUNT)
    _bind_readonly(os.path.realpath(harness_dir), root + HARNESS_MOUNT)
    _hide_modules(root, os.path.join(stdlib, "lib-dynload"))
    _hide_packages(root, stdlib)
    os.makedirs(root + "/dev")
    for name in DEVICES:
        if os.path.exists("/dev/" + name):
            open(f"{root}/dev/{name}", "a").close()
            _mount("/dev/" + name, f"{root}/dev/{name}", None, MS_BIND)
    os.makedirs(root + "/tmp")
    uid, gid = owner
    _mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
           f"size={tmpfs_bytes},mode=0700,uid={uid},gid={gid}")
    os.makedirs(root + "/.old")
    _syscall("pivot_root", os.fsencode(root), os.fsencode(root + "/.old"))
    os.chdir("/")
    _check(_libc.umount2(b"/.old", MNT_DETACH), "umount old root")
    os.rmdir("/.old")
    _mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir("/tmp")


def _hide_modules(root: str, dynload: str) -> None:
    """Cover each extension module of HIDDEN_MODULES in ``lib-dynload`` with an empty file."""
    if not os.path.isdir(dynload):
        return
    empty = root + "/.empty"
    open(empty, "a").close()
    for name in os.listdir(dynload):
        if name.split(".", 1)[0] in HIDDEN_MODULES:
            _mount(empty, root + os.path.join(dynload, name), None, MS_BIND)


def _hide_packages(root: str, stdlib: str) -> None:
    """Cover the installation's own site-packages with an empty folder: installed packages (numpy, cffi)
    can reach raw memory, and programs get the standard library only."""
    packages = os.path.join(stdlib, "site-packages")
    if os.path.isdir(packages):
        os.makedirs(root + "/.nothing", exist_ok=True)
        _mount(root + "/.nothing", root + packages, None, MS_BIND)


def drop_privileges(uid: int | None, gid: int | None, keep_reading: bool = False) -> None:
    """No capabilities, no way to regain any (no-new-privs), not dumpable (no ptrace, no /proc/PID/mem).
    Under root: switch to the given dedicated unprivileged uid/gid, which also makes RLIMIT_NPROC count.

    keep_reading (under root only): keep one capability, CAP_DAC_READ_SEARCH, through the execution of
    the runner, for a Python installation that other users cannot read (under ``/root``, say). Without
    namespaces, that is still far less than staying root: no writes, no device nodes, no signals."""
    if os.geteuid() == 0 and uid is not None:
        if keep_reading:
            prctl(PR_SET_KEEPCAPS, 1)
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)  # leaving uid 0 clears every capability (but the permitted, with KEEPCAPS)
        _set_capabilities(1 << CAP_DAC_READ_SEARCH if keep_reading else 0)
        if keep_reading:
            prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_DAC_READ_SEARCH)  # survives execve
            prctl(PR_SET_KEEPCAPS, 0)
    else:
        _set_capabilities(0)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_DUMPABLE, 0)


def _set_capabilities(mask: int) -> None:
    """This process's effective, permitted and inheritable capabilities, all set to ``mask``."""
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    low, high = mask & 0xFFFFFFFF, mask >> 32
    data = (ctypes.c_uint32 * 6)(low, low, low, high, high, high)
    _syscall("capset", header, data)
