"""Handing freed memory back to the operating system between the phases of a step, and the allocator a run uses."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_free_memory() -> None:
    """Return the C heap's free pages to the OS (glibc ``malloc_trim(0)``; a no-op elsewhere). After a phase that
    freed large temporaries (a generation's packed weights and KV cache, a step's gradients), the heap keeps
    them resident otherwise, and the next phase's allocations add to them in the peak."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


ALLOCATOR_SETTING = "AHA_ALLOCATOR"
_CHOSEN = "_AHA_ALLOCATOR_CHOSEN"  # set in the re-executed process: never re-execute twice


def tcmalloc_environment() -> dict[str, str] | None:
    """The environment to run this process again with gperftools' tcmalloc preloaded, or None to go on as it is.

    A training step frees and allocates tensors of the same few sizes thousands of times; glibc's allocator moves
    those sizes from mapped memory into its heap as it goes (its mmap threshold rises with every large block
    freed) and the heap fragments, so resident memory grows past the live tensors, and fresh pages cost faults.
    tcmalloc keeps freed blocks for reuse by size. Measured on the default run and on long completions
    (docs/benchmarks.md: 0.86x the step, 3.46 -> 3.27 GB; 8 x 1,024-token completions 7.28 -> 5.25 GiB at the same
    time), as PyTorch's own CPU launcher (``torch.backends.xeon.run_cpu --enable-tcmalloc``) does. None when
    ``AHA_ALLOCATOR=system``, when tcmalloc is not installed (Debian: libtcmalloc-minimal4, which setup.sh
    installs where it can), off Linux, or when it is preloaded already."""
    choice = os.environ.get(ALLOCATOR_SETTING, "tcmalloc")
    if choice not in ("tcmalloc", "system"):
        print(f"aha: warning: {ALLOCATOR_SETTING}={choice!r} is neither tcmalloc nor system; using the system's",
              file=sys.stderr)
    if choice != "tcmalloc" or os.environ.get(_CHOSEN):
        return None
    if not sys.platform.startswith("linux") or "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
        return None
    library = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
    if library is None:
        return None
    preload = " ".join(p for p in (library, os.environ.get("LD_PRELOAD", "")) if p)
    return {**os.environ, "LD_PRELOAD": preload, _CHOSEN: "1"}
