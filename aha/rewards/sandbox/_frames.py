"""The sandbox's wire format, shared by the parent, the fork server and the in-sandbox runner: a frame is an
8-byte big-endian length, then that many bytes of marshal data. Standard library only (it is imported by
freshly executed interpreters that see nothing but this folder and the standard library)."""

from __future__ import annotations

import marshal
import os
import select
import time


def write_frame(fd: int, message: dict) -> None:
    data = marshal.dumps(message)
    view = memoryview(len(data).to_bytes(8, "big") + data)
    while view:
        view = view[os.write(fd, view):]


def read_frame(fd: int, deadline: float | None = None) -> dict | None:
    """The next message on ``fd``; None at end of file or past ``deadline`` (a monotonic time)."""
    header = _read_exactly(fd, 8, deadline)
    if header is None:
        return None
    body = _read_exactly(fd, int.from_bytes(header, "big"), deadline)
    return None if body is None else marshal.loads(body)


def _read_exactly(fd: int, size: int, deadline: float | None) -> bytes | None:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks, left = [], size
    while left:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(int(remaining * 1000) + 1):
                return None
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
