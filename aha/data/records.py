"""Loading question/answer records from JSONL with a field mapping; errors name file, line and field."""

from __future__ import annotations

import json
from pathlib import Path


class DataError(ValueError):
    """A dataset file that cannot be used; the message starts with ``file:line:``."""


def load_jsonl(path: str | Path, field_map: dict[str, str] | None = None,
               required: tuple[str, ...] = ("question", "answer")) -> list[dict]:
    """Read a JSONL file into records whose keys are renamed by ``field_map`` (ours -> the file's).

    ``field_map={"question": "problem"}`` reads the file's ``problem`` as our ``question``; unmapped
    columns are kept as they are (rewards receive them). Every line is validated before any is used.
    """
    path = Path(path)
    field_map = field_map or {}
    records = []
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}:{number}: not valid UTF-8 (byte {err.start})") from None
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: malformed JSON: {err.msg} at column {err.colno}") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        record = dict(row)
        for ours, theirs in field_map.items():
            if theirs not in row:
                raise DataError(f"{path}:{number}: missing field {theirs!r} (mapped to {ours!r}); "
                                f"fields present: {', '.join(sorted(row))}")
            record[ours] = row[theirs]
        for name in required:
            if name not in record:
                raise DataError(f"{path}:{number}: missing field {name!r}; fields present: {', '.join(sorted(row))}"
                                f" (map one with field_map={{{name}: <field>}})")
            if record[name] is None or (isinstance(record[name], str) and not record[name].strip()):
                raise DataError(f"{path}:{number}: field {field_map.get(name, name)!r} is empty")
        records.append(record)
    if not records:
        raise DataError(f"{path}: no records")
    return records
