"""Loading configs: YAML recipes with ``key=value`` overrides into typed dataclasses.

Each field is defined once, documented by the docstring written under it (the CLI's ``--help`` reads
those docstrings from this source), type-checked on load, and written to the run directory as used.
Where each value came from (``recipe.yaml:12``, ``override``) is remembered, so a value that fails
validation later is reported at its source.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import logging
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from aha.utils.io import atomic_write_text

C = TypeVar("C")
log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names where and which field."""


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, read from its source (PEP 257 attribute docs)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert only the lossless cases (int -> float)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: must be one of {', '.join(repr(a) for a in args)}, got {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_tp, val_tp = args or (Any, Any)
        return {_coerce(k, key_tp, where): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        if isinstance(value, str):  # `key=a,b,c` on the command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = args or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        raise ConfigError(f"{where}: unsupported field type {tp!r}")
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _key_lines(text: str) -> dict[str, int]:
    """Line number (1-based) of each top-level key of a YAML mapping document."""
    node = yaml.compose(text)
    if node is None or not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value}


def _unknown(cls: type, key: str, where: str) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=3)
    command = getattr(cls, "command", "train")
    hint = f"; did you mean {', '.join(close)}?" if close else f"; run `aha {command} --help` for the fields"
    return ConfigError(f"{where}: unknown field {key!r} for {cls.__name__}{hint}")


def aliases(cls: type) -> dict[str, str]:
    """Every other name a field of ``cls`` may be given by -> the field: the short forms (``lr``) and the
    former names (``advantage_scale``) declared by ``cls`` and the sections it is made of."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        found.update(vars(klass).get("aliases", {}))
        found.update(vars(klass).get("renamed", {}))
    return found


def renamed(cls: type) -> dict[str, str]:
    """The former names of fields (a note is logged when one is used)."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        found.update(vars(klass).get("renamed", {}))
    return found


def _canonical(cls: type, key: Any, given: dict, where: str) -> Any:
    """The field a key names: itself, or the field it is another name of (``lr`` -> ``learning_rate``)."""
    target = aliases(cls).get(key)
    if target is None:
        return key
    if target in given:
        raise ConfigError(f"{where}: {key!r} and {target!r} are the same field; give one")
    if key in renamed(cls):
        log.info("note: %r is now called %r (%s); the old name still works", key, target, where)
    return target


def is_text_type(tp: Any) -> bool:
    """A str field, or an Optional[str] one."""
    if tp is str:
        return True
    args = typing.get_args(tp)
    return typing.get_origin(tp) in (Union, types.UnionType) and set(args) == {str, type(None)}


def parse_override(text: str, tp: Any = Any) -> tuple[str, Any]:
    """``key=value`` with the value read as YAML (``lr=1e-5`` -> float, ``rewards={a: 1}`` -> dict);
    for a text field the value is taken as written (``system_prompt=Think: then answer.``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if is_text_type(tp):
        return key, None if tp is not str and raw.strip() in ("null", "None", "~") else raw
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _looks_like_float(raw):
        value = float(raw)
    return key, value


def _looks_like_float(raw: str) -> bool:
    # YAML 1.1 reads "1e-5" as a string; a user writing lr=1e-5 means the number.
    try:
        float(raw)
        return True
    except ValueError:
        return False


def read_yaml(path: str | Path, what: str = "recipe file") -> tuple[str, Any]:
    """(text, parsed value) of a YAML file; a missing, non-UTF-8 or malformed file is a ConfigError naming
    the file (and the line)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        return text, yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {getattr(err, 'problem', err)}") from None


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None, mapping: dict[str, Any] | None = None,
                locations: dict[str, str] | None = None) -> C:
    """Build ``cls`` from defaults, then ``base``, then a YAML file, then ``mapping`` (values read from part of
    a larger file; ``locations`` says where each key was written, ``pipeline.yaml:14``), then ``key=value``
    overrides, and validate it (``validate()``)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for given, value in (base or {}).items():
        key = _canonical(cls, given, base, "base")
        if key not in hints:
            raise _unknown(cls, key, "base")
        values[key] = _coerce(value, hints[key], key)
    if path is not None:
        path = Path(path)
        text, data = read_yaml(path)
        data = data or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a recipe must be a mapping of field: value, got {type(data).__name__}")
        lines = _key_lines(text)
        for given, value in data.items():
            key = _canonical(cls, given, data, f"{path}:{lines.get(given, '?')}")
            where = f"{path}:{lines.get(given, '?')}: {given}"
            if key not in hints:
                raise _unknown(cls, key, f"{path}:{lines.get(given, '?')}")
            values[key] = _coerce(value, hints[key], where)
            sources[key] = f"{path}:{lines.get(given, '?')}"
    for given, value in (mapping or {}).items():
        place = (locations or {}).get(given, "recipe")
        key = _canonical(cls, given, mapping, place)
        if key not in hints:
            raise _unknown(cls, key, place)
        values[key] = _coerce(value, hints[key], f"{place}: {given}")
        sources[key] = place
    for text in overrides or []:
        key = _canonical(cls, text.split("=", 1)[0].strip(), {}, f"override {text!r}")
        _, value = parse_override(text, hints.get(key, Any))
        if key not in hints:
            raise _unknown(cls, key, f"override {text!r}")
        values[key] = _coerce(value, hints[key], f"override {key}")
        sources[key] = f"override {text.split('=', 1)[0].strip()}="
    try:
        config = cls(**values)
    except TypeError as err:
        raise ConfigError(f"{cls.__name__}: {err}") from None
    config.__dict__["_sources"] = sources
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def source_of(config: Any, name: str) -> str | None:
    """Where field ``name`` of a loaded config was set (``recipe.yaml:12``, ``override name=``), or None
    when it kept its default."""
    return getattr(config, "__dict__", {}).get("_sources", {}).get(name)


class Config:
    """Base of every command's config: ``validate()`` runs the ``check()`` of each section the config is
    made of, then the config's own; :meth:`error` names the field and where it was set."""

    command: typing.ClassVar[str] = "train"

    def validate(self) -> None:
        for klass in reversed(type(self).__mro__):
            check = vars(klass).get("check")
            if check is not None:
                check(self)

    def error(self, name: str, problem: str) -> ConfigError:
        """``recipe.yaml:12: name: problem`` (``name: problem`` for a value given on the command line or
        left at its default)."""
        return ConfigError(f"{self.where(name)}{name}: {problem}")

    def where(self, name: str) -> str:
        """``recipe.yaml:12: `` when field ``name`` was set in a file, else nothing."""
        source = source_of(self, name)
        return f"{source}: " if source and not source.startswith("override") else ""

    def require(self, condition: bool, name: str, problem: str) -> None:
        if not condition:
            raise self.error(name, problem)

    def require_positive(self, *names: str) -> None:
        for name in names:
            self.require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")

    def require_non_negative(self, *names: str) -> None:
        for name in names:
            self.require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")


def save_config(config: Any, path: str | Path) -> None:
    """Write the config exactly as used, one field a line, with its docstring as a comment above."""
    docs = field_docs(type(config))
    lines = [f"# {type(config).__name__}, as used by this run"]
    for f in dataclasses.fields(config):
        if f.name in docs:
            lines.append(f"# {docs[f.name]}")
        dumped = yaml.safe_dump({f.name: getattr(config, f.name)}, default_flow_style=True, sort_keys=False,
                                width=10_000).strip()
        lines.append(dumped[1:-1] if dumped.startswith("{") else dumped)
    atomic_write_text(path, "\n".join(lines) + "\n")


def describe_fields(cls: type) -> str:
    """Help text listing every field with its type, default and docstring."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    short: dict[str, list[str]] = {}
    for alias, target in aliases(cls).items():
        short.setdefault(target, []).append(alias)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        alias = f", or {' or '.join(short[f.name])}" if f.name in short else ""
        out.append(f"  {f.name} ({_type_name(hints[f.name])}, default {default!r}{alias})")
        if f.name in docs:
            out.extend("      " + line for line in textwrap.wrap(docs[f.name], 92))
    return "\n".join(out)


