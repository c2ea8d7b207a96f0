"""Exactly reproducible CPU runs: the same config and seed give bit-identical weights and logs, and a run
killed (SIGKILL) at any moment and resumed gives bit-identical weights and logs to an uninterrupted run."""

from __future__ import annotations

import json
import random
import signal
import time

import pytest
import torch

from aha.config import GRPOConfig, load_config
from aha.trainer.grpo import GRPOTrainer
from tests.trainer.helpers import launch, run_files, tiny_overrides, tiny_task, weights, write_task


def test_two_runs_with_the_same_seed_are_bit_identical(tmp_path):
    results = []
    for name in ("a", "b"):
        config = load_config(GRPOConfig, overrides=tiny_overrides(tmp_path / name, max_steps=4, beta=0.05,
                                                                  num_iterations=2, save_steps=2, eval_size=4))
        trainer = GRPOTrainer.from_config(config, task=tiny_task())
        trainer.fit()
        results.append((run_files(trainer.layout.root), trainer.model.state_dict()))
    (files_a, state_a), (files_b, state_b) = results
    assert files_a == files_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    changed = load_config(GRPOConfig, overrides=tiny_overrides(tmp_path / "c", max_steps=4, beta=0.05, seed=1,
                                                               num_iterations=2, save_steps=2, eval_size=4))
    other = GRPOTrainer.from_config(changed, task=tiny_task())
    other.fit()
    assert run_files(other.layout.root)["metrics"] != files_a["metrics"]  # the seed matters


# Each process resumes the last one's run and dies at its moment (counted within the process); the comments
# say where that falls with these settings (checkpoints at steps 2, 4, 6; evaluations at 0, 3, 6, 8).
KILLS = [
    "generation:3",   # mid-rollout of step 2, before any checkpoint: the resumed run restarts clean
    "backward:5",     # between micro-batch backward passes of step 1
    "checkpoint:1",   # the first checkpoint half-written (model saved, no state file)
    "log:6",          # half a line of step 3's metrics written; checkpoint 2 is the latest
    "evaluation:1",   # inside the held-out evaluation after step 3
    "rename:1",       # checkpoint 4 complete under its temporary name, not yet in place
    "rotation:1",     # checkpoint 2 being deleted after checkpoint 6 was written
    "generation:2",   # mid-rollout of step 8
    "backward:3",     # inside step 7
    "evaluation:1",   # inside the final evaluation, after the finished checkpoint 8
]


def test_a_run_killed_at_any_moment_and_resumed_is_bit_identical(tmp_path):
    task = write_task(tmp_path / "task.jsonl")
    straight = tmp_path / "straight"
    done = launch("never", straight, task, resume=False)
    output, _ = done.communicate(timeout=600)
    assert done.returncode == 0, output

    run = tmp_path / "killed"
    for number, moment in enumerate(KILLS):
        proc = launch(moment, run, task, resume=number > 0)
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == -signal.SIGKILL, f"{moment} was never reached:\n{output[-3000:]}"
    # and once more from outside, at a random moment
    proc = launch("never", run, task, resume=True)
    time.sleep(random.Random(0).uniform(4.0, 7.0))
    proc.kill()
    proc.communicate(timeout=600)
    proc = launch("never", run, task, resume=True)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output

    expected, got = run_files(straight), run_files(run)
    assert [m["step"] for m in got["metrics"]] == list(range(1, 9))  # no line twice, none lost
    assert got == expected
    want, have = weights(straight), weights(run)
    assert want.keys() == have.keys() and all(torch.equal(want[k], have[k]) for k in want)
    assert not list((run / "checkpoints").glob(".tmp-*")) and not list(run.glob(".*tmp*"))


@pytest.mark.parametrize("moment", ["generation:2", "log:2"])
def test_killed_before_the_first_checkpoint_the_resumed_run_starts_clean(tmp_path, moment):
    task = write_task(tmp_path / "task.jsonl")
    run = tmp_path / "run"
    proc = launch(moment, run, task, resume=False)
    proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL and (run / "eval.jsonl").exists()
    proc = launch("never", run, task, resume=True)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    labels = [json.loads(line)["label"] for line in (run / "eval.jsonl").read_text().splitlines()]
    assert labels == ["before", "step 3", "step 6", "after"]
