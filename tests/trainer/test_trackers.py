"""report_to: every metric and held-out evaluation also goes to the trackers asked for, at its step; a tracker
that is unknown or not installed stops the run before anything loads, with one line saying so."""

import importlib.machinery
import sys
import types

import pytest

from aha.config import ConfigError, SFTConfig, load_config
from tests.trainer.test_sft import make, read


@pytest.fixture
def fake_wandb(monkeypatch):
    calls = {"init": [], "log": [], "finish": 0}

    class Run:
        def log(self, values, step):
            calls["log"].append((step, values))

        def finish(self):
            calls["finish"] += 1

    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    module.init = lambda **kwargs: calls["init"].append(kwargs) or Run()
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


def test_metrics_and_evaluations_go_to_the_tracker_at_their_steps(tmp_path, fake_wandb):
    trainer = make(tmp_path, num_epochs=1, report_to="[wandb]")
    trainer.fit()
    (init,) = fake_wandb["init"]
    assert init["project"] == "aha" and init["resume"] == "allow" and init["config"]["model"] == "tiny:qwen2"
    train = [(step, v) for step, v in fake_wandb["log"] if any(k.startswith("train/") for k in v)]
    heldout = [(step, v) for step, v in fake_wandb["log"] if any(k.startswith("heldout/") for k in v)]
    metrics = read(trainer.layout.metrics)
    assert [step for step, _ in train] == [m["step"] for m in metrics]
    assert [v["train/loss"] for _, v in train] == [m["loss"] for m in metrics]
    assert [step for step, _ in heldout] == [0, len(metrics)]  # before and after
    assert fake_wandb["finish"] == 1


def test_an_unknown_or_missing_tracker_is_a_config_error(monkeypatch):
    with pytest.raises(ConfigError, match="unknown tracker 'mlflow'; known: tensorboard, wandb"):
        load_config(SFTConfig, overrides=["report_to=[mlflow]"])
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    monkeypatch.setattr(sys, "path", [])  # nothing to import it from
    with pytest.raises(ConfigError, match=r"wandb needs the wandb package \(pip install wandb\)"):
        load_config(SFTConfig, overrides=["report_to=[wandb]"])
