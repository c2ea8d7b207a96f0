"""Imports flow one way. Every import in the package (top-level or inside a function) is read from the source
and checked against the layers:

    utils, answers           know nothing else of aha
    algorithms               pure tensor code: utils only; no model, loop or I/O
    config                   utils, algorithms (names to validate against)
    models, types            config
    data                     no rewards, rollout, run, trainer, evaluation
    rewards                  no trainer, rollout, run, evaluation
    rollout                  no trainer, rewards, run, evaluation
    run                      no trainer, evaluation
    eval, analysis           no trainer
    trainer                  no pipeline
    pipeline                 anything below the CLI (traces, rejection sampling, distillation)
    cli                      imported by nothing but aha/__main__.py

Within a layer, packages do not import each other (rewards and rollout, eval and analysis).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "aha"

LAYERS = [
    ["aha.utils", "aha.answers"],
    ["aha.algorithms"],
    ["aha.config"],
    ["aha.models", "aha.types"],
    ["aha.data"],
    ["aha.rewards", "aha.rollout"],
    ["aha.run"],
    ["aha.eval", "aha.analysis"],
    ["aha.trainer"],
    ["aha.pipeline"],
    ["aha.cli"],
    ["aha.__main__"],
]
"""A module may import its own package and the packages of lower layers, nothing beside or above it."""
PURE = ("transformers", "peft", "safetensors", "json", "os", "pathlib", "io", "shutil", "open")
"""What the algorithms may not import besides: no model, no I/O."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool) -> set[str]:
    """Every module named by an import statement anywhere in ``source`` (relative imports resolved)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from aha import cli`
    return found


def package_of(module: str) -> str | None:
    """The layer entry (e.g. ``aha.eval``) a module belongs to."""
    return next((name for layer in LAYERS for name in layer if module == name or module.startswith(name + ".")), None)


def level(package: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def violations(module: str, imported: set[str]) -> list[str]:
    mine = package_of(module)
    found = []
    for name in sorted(imported):
        theirs = package_of(name)
        if mine is None:
            continue
        if theirs is not None and theirs != mine and level(theirs) >= level(mine):
            found.append(f"{module} imports {name}")
        if mine == "aha.algorithms" and name.split(".")[0] in PURE:
            found.append(f"{module} imports {name}")
    return sorted(set(found))


def package_modules() -> list[tuple[str, Path]]:
    return sorted((module_name(path), path) for path in PACKAGE.rglob("*.py"))


def test_imports_flow_one_way():
    problems = []
    for module, path in package_modules():
        imported = imports_of(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")
        problems.extend(violations(module, imported))
    assert problems == []


def test_every_module_belongs_to_a_layer():
    assert [m for m, _ in package_modules() if package_of(m) is None and m != "aha"] == []


@pytest.mark.parametrize("module, source, expected", [
    ("aha.eval.runner", "def f():\n    from aha.trainer.core import Trainer\n",
     ["aha.eval.runner imports aha.trainer"]),
    ("aha.data.tasks", "from aha.rewards import score\n", ["aha.data.tasks imports aha.rewards"]),
    ("aha.algorithms.losses", "import json\nfrom aha.utils.registry import Registry\n",
     ["aha.algorithms.losses imports json"]),
    ("aha.algorithms.losses", "from transformers import AutoModel\n", ["aha.algorithms.losses imports transformers"]),
    ("aha.rewards.math", "from ..rollout import hf\n", ["aha.rewards.math imports aha.rollout"]),
    ("aha.run.layout", "from aha import cli\n", ["aha.run.layout imports aha.cli"]),
    ("aha.rewards.math", "from aha.rollout.base import SamplingParams\n", ["aha.rewards.math imports aha.rollout"]),
    ("aha.pipeline.sample", "from aha.trainer.sft import SFTTrainer\n", []),
    ("aha.trainer.grpo", "from aha.eval.heldout import evaluate_heldout\n", []),
])
def test_the_checker_sees_a_forbidden_import(module, source, expected):
    found = violations(module, imports_of(source, module, False))
    assert all(any(f.startswith(e) for f in found) for e in expected)
    assert bool(found) == bool(expected)
