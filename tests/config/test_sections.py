"""Each setting is defined once: a field that two commands share has one name, one type and one docstring,
written in one place; where a command gives it its own default, that is declared (``aha eval`` samples as
the paper evaluates)."""

import ast
import dataclasses
import itertools
import typing
from pathlib import Path

from aha.config import EvalConfig, GRPOConfig, SFTConfig, aliases, field_docs, load_config
from aha.config.distill import DistillConfig
from aha.config.generate import GenerateConfig, SampleConfig
from aha.config.sections import PaperSampling
from aha.config.sft import SFTOptim

CONFIGS = [GRPOConfig, EvalConfig, SFTConfig, GenerateConfig, SampleConfig, DistillConfig]
DECLARED_DEFAULTS = {EvalConfig: PaperSampling, GenerateConfig: PaperSampling, SampleConfig: PaperSampling,
                     DistillConfig: PaperSampling, SFTConfig: SFTOptim}
"""The commands that give shared settings their own defaults, and the section that declares them."""
CONFIG_DIR = Path(__file__).resolve().parents[2] / "aha" / "config"


def documented_fields() -> dict[str, list[str]]:
    """Field name -> the classes (across aha/config) whose source writes a docstring under it."""
    found: dict[str, list[str]] = {}
    for path in CONFIG_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            for item, after in zip(node.body, node.body[1:]):
                if (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                        and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)):
                    found.setdefault(item.target.id, []).append(node.name)
    return found


def defaults(cls) -> dict[str, object]:
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls)}


def test_every_field_is_documented_in_exactly_one_place():
    where = documented_fields()
    for cls in CONFIGS:
        for f in dataclasses.fields(cls):
            assert len(where.get(f.name, [])) == 1, (cls.__name__, f.name, where.get(f.name))


def test_shared_fields_have_one_type_and_one_docstring():
    for a, b in itertools.combinations(CONFIGS, 2):
        hints_a, hints_b = typing.get_type_hints(a), typing.get_type_hints(b)
        docs_a, docs_b = field_docs(a), field_docs(b)
        for name in defaults(a).keys() & defaults(b).keys():
            assert hints_a[name] == hints_b[name] and docs_a[name] == docs_b[name], (a.__name__, b.__name__, name)
    shared = defaults(GRPOConfig).keys() & defaults(EvalConfig).keys()
    assert {"model", "temperature", "max_completion_length", "prompt_template", "seed", "output_dir"} <= shared


def test_a_shared_setting_differs_in_default_only_where_a_command_declares_it():
    for a, b in itertools.combinations(CONFIGS, 2):
        da, db = defaults(a), defaults(b)
        differing = {name for name in da.keys() & db.keys() if da[name] != db[name]}
        declared = set()
        for cls in (a, b):
            declared |= set(DECLARED_DEFAULTS[cls].__annotations__) if cls in DECLARED_DEFAULTS else set()
        assert differing <= declared, (a.__name__, b.__name__, differing - declared)
    grpo, evaluation = defaults(GRPOConfig), defaults(EvalConfig)
    differing = {n for n in grpo.keys() & evaluation.keys() if grpo[n] != evaluation[n]}
    assert differing == set(PaperSampling.__annotations__)


def test_one_name_per_setting_and_the_former_names_still_work():
    assert aliases(GRPOConfig)["advantage_scale"] == "advantage_estimator"
    for cls in (GRPOConfig, EvalConfig):
        assert load_config(cls, overrides=["max_new_tokens=7"]).max_completion_length == 7
        assert load_config(cls, overrides=["stop=[x]"]).stop_strings == ["x"]
        assert load_config(cls, overrides=["prompt=chat"]).prompt_template == "chat"
        assert load_config(cls, overrides=["output=o"]).output_dir == "o"
    assert load_config(GRPOConfig, overrides=["advantage_scale=rloo"]).advantage_estimator == "rloo"


def test_the_prefill_follows_the_template_in_every_command():
    for cls in (GRPOConfig, EvalConfig):
        assert load_config(cls).prefill_text == "<think>"
        assert load_config(cls, overrides=["prompt_template=chat"]).prefill_text == ""
        assert load_config(cls, overrides=["prompt_template=chat", "prefill=<t>"]).prefill_text == "<t>"
