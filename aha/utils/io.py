"""Files that survive a crash: atomic writes (text, JSON, whole directories) and append-only JSONL logs.

Atomic means written under a temporary name in the same folder and renamed into place, so a reader, or a
run killed at any moment, sees the old content or the new one, never half of it.
"""

from __future__ import annotations

import hashlib

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) in one step."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as indented JSON (non-finite floats written as null)."""
    atomic_write_text(path, json.dumps(clean_json(data), indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; when the block ends without error it replaces
    ``final`` (an existing one is removed first), otherwise it is deleted.

    >>> with atomic_directory("out/model") as tmp:  # doctest: +SKIP
    ...     model.save_pretrained(tmp)
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_directory(path: str | Path) -> None:
    """Delete a folder as a whole: it is first renamed away, so a process killed while deleting never
    leaves a half-deleted folder under the old name."""
    path = Path(path)
    if not path.exists():
        return
    doomed = path.with_name(f".tmp-removing-{path.name}-{os.getpid()}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_partial_directories(folder: str | Path) -> None:
    """Delete the temporary folders :func:`atomic_directory` left in ``folder`` when a process died in it."""
    folder = Path(folder)
    if folder.is_dir():
        for child in folder.glob(".tmp-*"):
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)


def clean_json(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (JSON has no spelling for them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def jsonl_text(records: list[dict[str, Any]]) -> str:
    """Records as JSON lines (non-finite floats written as null)."""
    return "".join(json.dumps(clean_json(r), ensure_ascii=False) + "\n" for r in records)


class JsonlFile:
    """One JSON object per line, appended and flushed record by record.

    A process killed while appending leaves at most one partly written last line; :meth:`read` ignores it
    and :meth:`truncate` (to a size recorded earlier, e.g. in a checkpoint) removes it.
    """

    def __init__(self, path: str | Path, *, fsync: bool = False):
        self.path = Path(path)
        self.fsync = fsync

    def append(self, *records: dict[str, Any]) -> None:
        if not records:
            return
        text = jsonl_text(list(records))
        with self.path.open("a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())

    def read(self) -> list[dict[str, Any]]:
        """Every complete record (a cut-off last line is left out)."""
        return [record for _, record in self.lines()]

    def lines(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(line number, record) of every complete line; raises ValueError naming file:line on a bad one."""
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]
        for number, line in enumerate(complete.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(f"{self.path}:{number}: not a JSON record ({err})") from None

    def size(self) -> int:
        """Bytes of complete lines (what :meth:`truncate` can return to)."""
        if not self.path.exists():
            return 0
        raw = self.path.read_bytes()
        return raw.rfind(b"\n") + 1

    def truncate(self, size: int) -> None:
        """Cut the file back to ``size`` bytes (records appended after that point are dropped)."""
        if self.path.exists() and self.path.stat().st_size > size:
            with self.path.open("r+b") as f:
                f.truncate(size)

    def drop_partial_line(self) -> bool:
        """Remove a cut-off last line; True when there was one."""
        size = self.size()
        if self.path.exists() and self.path.stat().st_size > size:
            self.truncate(size)
            return True
        return False
