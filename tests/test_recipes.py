"""The recipes in recipes/ load, and the default recipe file is exactly the defaults."""

from pathlib import Path

import pytest
import yaml

from aha.config import GRPOConfig, load_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
DEFAULT_RECIPE = RECIPES / "smollm2" / "zero-chain-sum.yaml"


def test_the_default_recipe_file_is_the_defaults():
    assert load_config(GRPOConfig, DEFAULT_RECIPE) == load_config(GRPOConfig)


def test_every_value_in_the_default_recipe_is_the_default():
    # each key written in the file (not only the loaded result) equals the dataclass default
    written = yaml.safe_load(DEFAULT_RECIPE.read_text())
    defaults = load_config(GRPOConfig)
    differing = {k: v for k, v in written.items() if getattr(defaults, k) != v and not (
        isinstance(v, (int, float)) and getattr(defaults, k) == float(v))}
    assert differing == {}


def command_of(path: Path):
    from aha.config import SFTConfig
    from aha.config.distill import DistillConfig

    return {"distill": DistillConfig, "sft": SFTConfig}.get(path.stem.split("-")[0], GRPOConfig)


@pytest.mark.parametrize("path", sorted(RECIPES.rglob("*.yaml")), ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_recipe_loads(path, monkeypatch):
    if "stages" in (yaml.safe_load(path.read_text()) or {}):  # a pipeline recipe: every stage's config
        from aha.pipeline.recipe import parse

        monkeypatch.chdir(RECIPES.parent)  # its data paths are relative to the checkout
        assert parse(path).stages
        return
    load_config(command_of(path), path)
