"""Question/answer records from any supported source, with a field mapping and validation up front.

A field map renames the source's fields to ours (``{question: problem}`` reads the file's ``problem``
as our ``question``); a composite field joins several (``{question: Body + Question}`` for SVAMP). Every
row is checked before any is used, and each problem is reported as ``file:line: what is wrong``:
by default the first one raises :class:`DataError`; with ``on_error="skip"`` bad rows are skipped and
counted. Unmapped fields are kept as they are (rewards receive them as columns).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

from aha.data.readers import DataError, RawRow, read_rows

__all__ = ["DataError", "LoadResult", "load_records", "make_record", "parse_field_map"]

OnError = Literal["raise", "skip"]
_SENTENCE_END = (".", "?", "!", ":", ";")


@dataclass
class LoadResult:
    """The usable records of a source, and the rows that were skipped (``on_error="skip"``)."""

    source: str
    records: list[dict[str, Any]]
    skipped: list[str] = field(default_factory=list)
    """One ``file:line: what is wrong`` message per skipped row."""


def parse_field_map(spec: str | dict[str, str] | None) -> dict[str, str]:
    """``"question=problem answer=answer"`` (or a dict) -> ``{"question": "problem", "answer": "answer"}``.

    Pairs are separated by spaces or commas; a composite value is written ``Body+Question``.
    """
    if spec is None:
        return {}
    if isinstance(spec, dict):
        return {str(k): str(v) for k, v in spec.items()}
    mapping: dict[str, str] = {}
    for pair in re.split(r"[\s,]+(?=[^\s,+=]+=)", spec.strip()):
        if not pair:
            continue
        if "=" not in pair:
            raise DataError(f"field map {spec!r}: {pair!r} is not ours=theirs (e.g. question=problem)")
        ours, theirs = (part.strip() for part in pair.split("=", 1))
        if not ours or not theirs:
            raise DataError(f"field map {spec!r}: {pair!r} is not ours=theirs (e.g. question=problem)")
        mapping[ours] = theirs
    return mapping


def field_parts(theirs: str) -> list[str]:
    """``"Body + Question"`` -> ``["Body", "Question"]``; a plain field name is a single part."""
    return [part.strip() for part in theirs.split("+") if part.strip()] or [theirs]


def join_parts(values: list[Any]) -> str:
    """Join the parts of a composite field into one text: each part stripped, a part that does not end a
    sentence gets a full stop, parts separated by a space (``"5 apples"``, ``"How many?"`` ->
    ``"5 apples. How many?"``)."""
    texts = [str(v).strip() for v in values if v is not None and str(v).strip()]
    return " ".join(t if i == len(texts) - 1 or t.endswith(_SENTENCE_END) else t + "."
                    for i, t in enumerate(texts))


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def make_record(row: dict[str, Any], field_map: dict[str, str], required: tuple[str, ...] = ("question", "answer"),
                text_fields: tuple[str, ...] = ("question",), where: str = "") -> dict[str, Any]:
    """A validated record: ``row`` with our fields filled in from the mapped ones.

    Raises DataError(``where: what is wrong``) for a missing or empty required field, or a text field
    (the question) that is not text.
    """
    prefix = f"{where}: " if where else ""
    present = ", ".join(sorted(row)) or "(none)"
    record = dict(row)
    for ours, theirs in field_map.items():
        parts = field_parts(theirs)
        for part in parts:
            if part not in row:
                raise DataError(f"{prefix}missing field {part!r} (mapped to {ours!r}); fields present: {present}")
        record[ours] = row[parts[0]] if len(parts) == 1 else join_parts([row[p] for p in parts])
    for name in required:
        source_name = field_map.get(name, name)
        if name not in record:
            raise DataError(f"{prefix}missing field {name!r}; fields present: {present} "
                            f"(map one with field_map={{{name}: <field>}})")
        value = record[name]
        if _is_empty(value):
            raise DataError(f"{prefix}field {source_name!r} is empty")
        if name in text_fields and not isinstance(value, str):
            raise DataError(f"{prefix}field {source_name!r} is not text (got {type(value).__name__} {value!r:.40})")
    return record


def collect_records(rows: Iterable[RawRow], source: str, field_map: dict[str, str] | None = None,
                    required: tuple[str, ...] = ("question", "answer"), on_error: OnError = "raise",
                    text_fields: tuple[str, ...] = ("question",)) -> LoadResult:
    """Validate raw rows into records (see :func:`load_records`)."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    field_map = field_map or {}
    result = LoadResult(source, [])
    for raw in rows:
        try:
            if raw.problem is not None or raw.row is None:
                raise DataError(f"{raw.where}: {raw.problem}")
            result.records.append(make_record(raw.row, field_map, required, text_fields, raw.where))
        except DataError as err:
            if on_error == "raise":
                raise
            result.skipped.append(str(err))
    if not result.records:
        detail = f" ({len(result.skipped)} rows skipped; the first: {result.skipped[0]})" if result.skipped else ""
        raise DataError(f"{source}: no records{detail}")
    return result


def load_records(source: str | Path, field_map: dict[str, str] | str | None = None,
                 required: tuple[str, ...] = ("question", "answer"), on_error: OnError = "raise",
                 split: str = "test", text_fields: tuple[str, ...] = ("question",)) -> LoadResult:
    """Load and validate the records of a file (JSONL, JSON, CSV, Parquet), a folder of files, or a hub
    dataset name (``org/name[:split]``).

    >>> load_records("svamp.jsonl", "question=Body+Question answer=Answer").records[0]["question"]
    "There are 87 oranges and 290 bananas in Philip's collection. ... How big is each group of bananas?"
    """
    return collect_records(read_rows(source, split), str(source), parse_field_map(field_map), required, on_error,
                           text_fields)
