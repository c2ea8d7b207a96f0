"""Pipeline recipes: a YAML file with a list of named stages, each one of the project's stage kinds with its
own settings, and references between them. Everything is checked before any stage runs.

    output_dir: runs/r1            # every stage runs in output_dir/NAME/
    defaults: {seed: 0}            # given to every stage whose kind has the field
    stages:
      - name: cold_start
        kind: sft
        model: smollm2-135m-instruct
        dataset: recipes/data/chain-sum-cold-start.jsonl
      - name: rl
        kind: grpo
        model: ${stages.cold_start.output}     # the run directory of cold_start (its final checkpoint)

A stage's ``output`` is what it makes: the run directory (sft, grpo, distill, eval) or the JSONL file (generate:
traces.jsonl, sample: kept.jsonl, mix: mixed.jsonl). A reference may sit inside a longer string
(``${stages.d.output}/students/x``) and anywhere in a stage's values, lists and mappings included.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aha.config import ConfigError, EvalConfig, GRPOConfig, SFTConfig, load_config, parse_override
from aha.config.distill import DistillConfig
from aha.config.generate import GenerateConfig, SampleConfig
from aha.config.loading import read_yaml
from aha.config.pipeline import MixConfig

KINDS: dict[str, type] = {"sft": SFTConfig, "grpo": GRPOConfig, "generate": GenerateConfig, "sample": SampleConfig,
                          "mix": MixConfig, "distill": DistillConfig, "eval": EvalConfig}
"""Stage kind -> its config (the fields of the command of that name; grpo covers every RL algorithm)."""
OUTPUT_FIELD = {"sft": "output_dir", "grpo": "output_dir", "distill": "output_dir", "eval": "output_dir",
                "generate": "output", "sample": "output", "mix": "output"}
"""The field the pipeline sets to the stage's place in the run directory."""
OUTPUT_FILE = {"generate": "traces.jsonl", "sample": "kept.jsonl", "mix": "mixed.jsonl"}
RESUMABLE = ("sft", "grpo")
"""Kinds whose config has ``resume`` (set on by the pipeline, so an interrupted stage goes on)."""
INPUT_FIELDS = ("model", "teacher", "dataset", "eval_dataset", "task", "prompts", "traces", "students", "inputs",
                "benchmarks", "data_dir")
"""Fields that name something a stage reads (checked to exist when they name a local path)."""
TOP_LEVEL = ("output_dir", "defaults", "stages", "description")
REFERENCE = re.compile(r"\$\{([^}]*)\}")
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".gguf", ".yaml", ".jsonl.gz", ".csv.gz", ".json.gz")


@dataclass
class Stage:
    """One stage of a pipeline: its name, kind, values as written, and (once resolved) its config."""

    name: str
    kind: str
    values: dict[str, Any]
    where: str
    """``recipe.yaml:12``: where the stage starts."""
    locations: dict[str, str]
    """Field -> ``recipe.yaml:14``."""
    index: int
    depends: list[str] = field(default_factory=list)
    """The stages whose outputs this one reads, in recipe order."""
    config: Any = None
    dir: Path = Path()
    output: str = ""

    def error(self, key: str | None, problem: str) -> ConfigError:
        place = self.locations.get(key, self.where) if key else self.where
        return ConfigError(f"{place}: stage {self.name!r}: {f'{key}: ' if key else ''}{problem}")


@dataclass
class Pipeline:
    """A checked recipe: stages in the order they run, each with its resolved config."""

    path: str
    output_dir: Path
    stages: list[Stage]
    description: str = ""

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ConfigError(f"{self.path}: no stage named {name!r}; stages: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def downstream(self, name: str) -> list[str]:
        """``name`` and every stage that reads from it, directly or not."""
        found = [name]
        for stage in self.stages:
            if stage.name not in found and any(d in found for d in stage.depends):
                found.append(stage.name)
        return found


def _lines(node: yaml.Node, path: str) -> dict[str, str]:
    return {k.value: f"{path}:{k.start_mark.line + 1}" for k, _ in node.value} \
        if isinstance(node, yaml.MappingNode) else {}


def parse(path: str | Path, overrides: list[str] | None = None) -> Pipeline:
    """Read and check a recipe (see the module docstring); ``overrides`` are ``output_dir=D`` and
    ``STAGE.field=value``. Raises :class:`ConfigError` naming the file, line, stage and field."""
    path = str(path)
    text, data = read_yaml(path, "pipeline recipe")
    root = yaml.compose(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a pipeline recipe is a mapping with a `stages` list")
    top = _lines(root, path)
    for key in data:
        if key not in TOP_LEVEL:
            close = difflib.get_close_matches(str(key), TOP_LEVEL, n=1)
            raise ConfigError(f"{top.get(key, path)}: unknown top-level key {key!r}"
                              + (f"; did you mean {close[0]}?" if close else f"; valid: {', '.join(TOP_LEVEL)}"))
    stage_overrides, output_dir = _split_overrides(overrides or [], path)
    output_dir = output_dir or data.get("output_dir") or f"runs/{Path(path).stem}"
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{top.get('defaults', path)}: defaults must be a mapping of field: value")
    raw_stages = data.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise ConfigError(f"{top.get('stages', path)}: `stages` must be a non-empty list of stages "
                          "(- name: ..., kind: ...)")
    stage_nodes = next(v for k, v in root.value if k.value == "stages").value
    stages = [_stage(i, raw, node, path) for i, (raw, node) in enumerate(zip(raw_stages, stage_nodes))]
    names = [s.name for s in stages]
    for stage in stages:
        if names.count(stage.name) > 1:
            raise stage.error("name", f"two stages are named {stage.name!r}; names must be unique")
    for name in stage_overrides:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            raise ConfigError(f"override {name}.…: no stage named {name!r}"
                              + (f"; did you mean {close[0]}?" if close else f"; stages: {', '.join(names)}"))
    for stage in stages:
        stage.depends = _references(stage, names)
    ordered = _order(stages)
    root_dir = Path(output_dir)
    for stage in ordered:
        stage.dir = root_dir / stage.name
        stage.output = str(stage.dir / OUTPUT_FILE[stage.kind]) if stage.kind in OUTPUT_FILE else str(stage.dir)
    outputs = {s.name: s.output for s in stages}
    for stage in ordered:
        stage.config = _resolve(stage, defaults, outputs, stage_overrides.get(stage.name, []), str(root_dir))
        _check_inputs(stage, {s.name: s.dir for s in stages})
        if stage.kind == "grpo":  # rewards are built (not run) now, so that a wrong one stops nothing midway
            from aha.trainer.preflight import check_rewards

            try:
                check_rewards(stage.config)
            except ConfigError as err:
                raise ConfigError(str(err) if "stage " in str(err) else
                                  f"{stage.where}: stage {stage.name!r}: {err}") from None
    return Pipeline(path, root_dir, ordered, str(data.get("description") or ""))


def _split_overrides(overrides: list[str], path: str) -> tuple[dict[str, list[str]], str | None]:
    per_stage: dict[str, list[str]] = {}
    output_dir = None
    for text in overrides:
        key, _, value = text.partition("=")
        key = key.strip()
        if key == "output_dir":
            output_dir = parse_override(text, str)[1]
        elif "." in key:
            stage, _, name = key.partition(".")
            per_stage.setdefault(stage, []).append(f"{name}={value}")
        else:
            raise ConfigError(f"override {text!r}: a pipeline takes output_dir=D or STAGE.field=value")
    return per_stage, output_dir


def _stage(index: int, raw: Any, node: yaml.Node, path: str) -> Stage:
    where = f"{path}:{node.start_mark.line + 1}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: stage {index + 1} must be a mapping with a name and a kind")
    locations = _lines(node, path)
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"{locations.get('name', where)}: stage {index + 1}: name must be a word of letters, "
                          f"digits, _ and - starting with a letter, got {name!r}")
    kind = raw.get("kind")
    if kind not in KINDS:
        close = difflib.get_close_matches(str(kind), KINDS, n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; kinds: {', '.join(KINDS)}"
        raise ConfigError(f"{locations.get('kind', where)}: stage {name!r}: "
                          + (f"unknown kind {kind!r}{hint}" if kind is not None else f"no kind{hint}"))
    values = {k: v for k, v in raw.items() if k not in ("name", "kind")}
    return Stage(name, kind, values, where, locations, index)


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _references(stage: Stage, names: list[str]) -> list[str]:
    found = []
    for key, value in stage.values.items():
        for text in _strings(value):
            for expression in REFERENCE.findall(text):
                parts = expression.strip().split(".")
                if len(parts) != 3 or parts[0] != "stages" or parts[2] != "output":
                    raise stage.error(key, f"cannot resolve ${{{expression}}}; a reference is "
                                           "${stages.NAME.output}")
                if parts[1] == stage.name:
                    raise stage.error(key, "a stage cannot read its own output")
                if parts[1] not in names:
                    close = difflib.get_close_matches(parts[1], names, n=1)
                    raise stage.error(key, f"${{{expression}}} names no stage"
                                           + (f"; did you mean {close[0]}?" if close else
                                              f"; stages: {', '.join(names)}"))
                if parts[1] not in found:
                    found.append(parts[1])
    return found


def _order(stages: list[Stage]) -> list[Stage]:
    """Recipe order, except that a stage runs after every stage it reads from; a cycle is an error."""
    by_name = {s.name: s for s in stages}
    ordered: list[Stage] = []
    state: dict[str, str] = {}

    def visit(stage: Stage, trail: list[str]) -> None:
        if state.get(stage.name) == "done":
            return
        if state.get(stage.name) == "visiting":
            cycle = trail[trail.index(stage.name):] + [stage.name]
            raise stage.error(None, f"its inputs form a cycle: {' -> '.join(cycle)}")
        state[stage.name] = "visiting"
        for name in stage.depends:
            visit(by_name[name], trail + [stage.name])
        state[stage.name] = "done"
        ordered.append(stage)

    for stage in stages:
        visit(stage, [])
    return ordered


def substitute(value: Any, outputs: dict[str, str], output_dir: str) -> Any:
    """``value`` with every ``${stages.NAME.output}`` replaced by that stage's output."""
    if isinstance(value, str):
        return REFERENCE.sub(lambda m: outputs[m.group(1).strip().split(".")[1]], value)
    if isinstance(value, dict):
        return {k: substitute(v, outputs, output_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, outputs, output_dir) for v in value]
    return value


def _resolve(stage: Stage, defaults: dict[str, Any], outputs: dict[str, str], overrides: list[str],
             output_dir: str):
    cls = KINDS[stage.kind]
    names = {f.name for f in dataclasses.fields(cls)}
    target = OUTPUT_FIELD[stage.kind]
    if target in stage.values:
        raise stage.error(target, f"set by the pipeline (the stage writes to {stage.output}); remove it")
    base = {k: v for k, v in defaults.items() if k in names and k != target}
    base[target] = stage.output
    if stage.kind in RESUMABLE:
        base["resume"] = True
    mapping = substitute(stage.values, outputs, output_dir)
    locations = {k: f"{stage.locations.get(k, stage.where)}: stage {stage.name!r}" for k in mapping}
    try:
        return load_config(cls, overrides=overrides, base=substitute(base, outputs, output_dir), mapping=mapping,
                           locations=locations)
    except ConfigError as err:
        message = str(err)
        if "stage " not in message:
            message = f"{stage.where}: stage {stage.name!r} ({stage.kind}): {message}"
        raise ConfigError(message) from None


def is_local_path(text: str) -> bool:
    """Whether a value names a local file or folder (rather than a hub id, an alias or a built-in name)."""
    if text.startswith(("/", "./", "../", "~")) or text.lower().endswith(DATA_SUFFIXES):
        return True
    first = text.split("/", 1)[0]
    return "/" in text and (text.count("/") > 1 or Path(first).is_dir())


def _check_inputs(stage: Stage, dirs: dict[str, Path]) -> None:
    """Every local path a stage reads exists, or is made by a stage it reads from."""
    for key in INPUT_FIELDS:
        if key not in stage.values:
            continue
        resolved = getattr(stage.config, key, None)
        for text in _strings(resolved):
            if not text or not is_local_path(text):
                continue
            path = Path(text).expanduser()
            if path.exists() or any(_inside(path, dirs[name]) for name in stage.depends):
                continue
            raise stage.error(key, f"{text}: no such file or folder (and no stage makes it)")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False
