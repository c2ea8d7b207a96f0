"""Read raw rows from dataset files: JSONL (optionally gzipped), JSON, CSV, Parquet, a folder of those, or
a hub dataset where the hub is reachable.

Every reader yields :class:`RawRow` items: where the row came from (``file:line`` for line-based formats,
``file:row N`` for the others) and either the row as a dict or the problem that stops it from being one
(a malformed JSON line, bytes that are not UTF-8). Problems that concern a single row are yielded, not
raised, so that a caller can skip and count them; problems with a whole file raise :class:`DataError`.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from aha.utils.hub import hub_reachable, offline_hub

FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet")


class DataError(ValueError):
    """A dataset that cannot be used; the message starts with ``file:line:`` (or ``file:``)."""


@dataclass
class RawRow:
    """One row of a source, or the reason it could not be read."""

    where: str
    """``file:line`` (JSONL, CSV, JSON) or ``file:row N`` (Parquet, hub datasets), 1-based."""
    row: dict[str, Any] | None
    """The row's fields, or None when ``problem`` says why there is no row."""
    problem: str | None = None


def file_format(path: Path) -> str | None:
    """The format of a data file by its name (``jsonl``, ``json``, ``csv``, ``parquet``), or None."""
    name = path.name.lower()
    for suffix in FILE_SUFFIXES:
        if name.endswith(suffix):
            return suffix.lstrip(".").removesuffix(".gz")
    return None


def looks_like_hub_name(source: str) -> bool:
    """``org/name`` (optionally ``:split``) that is not a local path: a hub dataset id."""
    name = source.split(":", 1)[0]
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not Path(name).exists() and file_format(Path(name)) is None


def read_rows(source: str | Path, split: str = "test") -> Iterator[RawRow]:
    """Rows of a file, of every data file in a folder (in name order), or of a hub dataset.

    A hub dataset is named ``org/name`` or ``org/name:split`` (default ``split``); it is loaded with the
    ``datasets`` library and needs the hub (or a local ``datasets`` cache) to be reachable.
    """
    text = str(source)
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and file_format(p))
        if not files:
            raise DataError(f"{path}: no data files in this folder (looked for {', '.join(FILE_SUFFIXES)})")
        for file in files:
            yield from read_file(file)
        return
    if path.exists():
        yield from read_file(path)
        return
    if looks_like_hub_name(text):
        name, _, hub_split = text.partition(":")
        yield from read_hub(name, hub_split or split)
        return
    raise DataError(f"{path}: file not found")


def read_file(path: Path, kind: str | None = None) -> Iterator[RawRow]:
    """Rows of one data file, in the format ``kind`` (jsonl, json, csv, parquet) or the one its name says."""
    path = Path(path)
    kind = kind or file_format(path)
    readers = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}
    if kind is None:
        raise DataError(f"{path}: unsupported file type; use one of {', '.join(FILE_SUFFIXES)}")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror}") from None
    if path.name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"{path}: not a valid gzip file ({err})") from None
    return readers[kind](path, raw)


def _read_jsonl(path: Path, raw: bytes) -> Iterator[RawRow]:
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            yield RawRow(where, None, f"not valid UTF-8 (byte {err.start + 1} of the line)")
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            yield RawRow(where, None, f"malformed JSON at column {err.colno}: {err.msg}")
            continue
        if not isinstance(row, dict):
            yield RawRow(where, None, f"expected a JSON object, got {_json_kind(row)}")
            continue
        yield RawRow(where, row)


def _decode_file(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        column = err.start - raw.rfind(b"\n", 0, err.start)
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {column} of the line)") from None


def _read_json(path: Path, raw: bytes) -> Iterator[RawRow]:
    """A JSON array of objects, or an object holding one such array (``{"data": [...]}``)."""
    text = _decode_file(path, raw)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: malformed JSON at column {err.colno}: {err.msg}") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a JSON array of objects (or an object holding exactly one array), "
                            f"got an object with keys {', '.join(sorted(data)) or '(none)'}")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {_json_kind(data)}")
    for number, row in enumerate(data, start=1):
        where = f"{path}:row {number}"
        if isinstance(row, dict):
            yield RawRow(where, row)
        else:
            yield RawRow(where, None, f"expected a JSON object, got {_json_kind(row)}")


def _read_csv(path: Path, raw: bytes) -> Iterator[RawRow]:
    """CSV with a header line; ``where`` is the line the row starts on. Non-UTF-8 bytes spoil their row only."""
    text = raw.decode("utf-8-sig", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as err:
        raise DataError(f"{path}:1: malformed CSV header: {err}") from None
    if _has_bad_bytes(header):
        raise DataError(f"{path}:1: not valid UTF-8 in the header line")
    names = [h.strip() for h in header]
    start = reader.line_num + 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield RawRow(f"{path}:{start}", None, f"malformed CSV: {err}")
            start = reader.line_num + 1
            continue
        where, start = f"{path}:{start}", reader.line_num + 1
        if not values or all(not v.strip() for v in values):
            continue
        if _has_bad_bytes(values):
            yield RawRow(where, None, "not valid UTF-8")
        elif len(values) != len(names):
            yield RawRow(where, None, f"expected {len(names)} columns as in the header, got {len(values)}")
        else:
            yield RawRow(where, dict(zip(names, values)))


def _has_bad_bytes(values: list[str]) -> bool:
    return any("\udc80" <= ch <= "\udcff" for value in values for ch in value)


def _read_parquet(path: Path, raw: bytes) -> Iterator[RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(raw))
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    for number, row in enumerate(table.to_pylist(), start=1):
        yield RawRow(f"{path}:row {number}", row)


def read_hub(name: str, split: str) -> Iterator[RawRow]:
    """Rows of a hub dataset's split, through ``datasets`` (needs the hub or a local datasets cache; where the
    hub cannot be reached, the cache is read without asking it)."""
    import datasets

    online = hub_reachable()
    try:
        with contextlib.nullcontext() if online else offline_hub():
            dataset = datasets.load_dataset(name, split=split)
    except Exception as err:  # offline, unknown name, unknown split: all end here with the library's reason
        where = "" if online else " (the Hugging Face hub is unreachable: only the local datasets cache was read)"
        raise DataError(f"{name}: cannot load the hub dataset (split {split!r}){where}: {type(err).__name__}: "
                        f"{err}") from None
    for number, row in enumerate(dataset, start=1):
        yield RawRow(f"{name}:{split}:row {number}", dict(row))


def _json_kind(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number",
             type(None): "null", dict: "an object"}
    return names.get(type(value), type(value).__name__)
