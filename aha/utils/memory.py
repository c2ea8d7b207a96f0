"""Handing freed memory back to the operating system between the phases of a step."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


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
