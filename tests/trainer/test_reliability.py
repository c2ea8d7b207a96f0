"""Runs that stop cleanly, checkpoints never trusted when broken, numerics that never go silent."""

import errno
import json

import pytest
import torch

import aha.run.checkpoint as checkpoint_module
from aha.cli import main
from aha.config import GRPOConfig, load_config
from aha.run import DiskFullError, checkpoint_problem
from aha.trainer.core import NonFiniteError
from aha.trainer.grpo import GRPOTrainer
from tests.trainer.helpers import tiny_overrides, tiny_task
from tests.trainer.helpers import launch, run_files, weights, write_task


def make(tmp_path, **extra) -> GRPOTrainer:
    config = load_config(GRPOConfig, overrides=tiny_overrides(tmp_path, max_train_minutes=0, **extra))
    return GRPOTrainer.from_config(config, task=tiny_task())


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- stopping ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("moment, code", [("term:3", 0), ("term2:3", 130)])
def test_sigterm_finishes_the_step_checkpoints_and_resumes_exactly(tmp_path, moment, code):
    task = write_task(tmp_path / "task.jsonl")
    straight = tmp_path / "straight"
    proc = launch("never", straight, task, resume=False)
    assert proc.communicate(timeout=600)[0] and proc.returncode == 0

    run = tmp_path / "stopped"
    proc = launch(moment, run, task, resume=False)  # the signal comes inside step 2's rollout
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == code, output
    if code == 0:  # the first signal: step 2 finished, a checkpoint written, how to resume printed
        summary = json.loads((run / "summary.json").read_text())
        assert summary["stopped"] == "SIGTERM" and summary["steps"] == 2
        assert (run / "checkpoints" / "step-000002").is_dir() and "Resume with: aha train" in output
    else:  # the second: stopped at once, nothing half-written kept
        assert "stopped at once" in output and not (run / "summary.json").exists()
    proc = launch("never", run, task, resume=True)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    assert run_files(run) == run_files(straight)
    want, have = weights(straight), weights(run)
    assert all(torch.equal(want[k], have[k]) for k in want)


# --- checkpoints never trusted when broken -------------------------------------------------------------
@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete"])
def test_a_damaged_checkpoint_is_reported_and_the_one_before_is_used(tmp_path, damage, capsys):
    make(tmp_path / "a", max_steps=5, save_steps=1, keep_checkpoints=0).fit()
    expected = read(tmp_path / "a" / "run" / "metrics.jsonl")
    first = make(tmp_path / "b", max_steps=3, save_steps=1, keep_checkpoints=0)
    first.fit()
    latest = first.layout.checkpoint(3) / "model" / "model.safetensors"
    data = bytearray(latest.read_bytes())
    if damage == "flip a byte":
        data[len(data) // 2] ^= 0xFF
        latest.write_bytes(bytes(data))
    elif damage == "truncate":
        latest.write_bytes(bytes(data[: len(data) // 3]))
    else:
        latest.unlink()
    assert checkpoint_problem(first.layout.checkpoint(3)) is not None
    resumed = make(tmp_path / "b", max_steps=5, save_steps=1, keep_checkpoints=0, resume=True)
    resumed.fit()
    err = capsys.readouterr().err
    assert "step-000003 is damaged" in err and "resumed from" in err and "step-000002" in err
    assert (first.layout.checkpoints / "step-000003.damaged").is_dir()
    untimed = [{k: v for k, v in m.items() if not k.startswith("time/")} for m in read(resumed.layout.metrics)]
    assert untimed == [{k: v for k, v in m.items() if not k.startswith("time/")} for m in expected]


def test_the_final_evaluation_runs_after_the_last_checkpoint_with_the_optimiser_state_freed(tmp_path, monkeypatch):
    seen = []
    evaluate = GRPOTrainer.evaluate

    def watched(self, step):
        latest = self.layout.latest_checkpoint()
        seen.append((step, latest.name if latest else None, len(self.policy.optimizer.state)))
        return evaluate(self, step)

    monkeypatch.setattr(GRPOTrainer, "evaluate", watched)
    trainer = make(tmp_path, max_steps=2, eval_size=4)
    trainer.fit()
    assert seen == [(0, None, 0), (2, "step-000002", 0)]  # the model saved, AdamW's moments gone
    state = torch.load(trainer.layout.checkpoint(2) / "trainer_state.pt", weights_only=False)
    assert state["finished"] and len(state["optimizer"]["state"]) == len(trainer.policy.params)  # kept for resuming


def test_a_run_killed_in_its_final_evaluation_runs_it_when_resumed(tmp_path, monkeypatch, capsys):
    straight = make(tmp_path / "straight", max_steps=2, eval_size=4).fit()
    evaluate = GRPOTrainer.evaluate

    def killed_at_the_end(self, step):
        if step == 2:
            raise KeyboardInterrupt
        return evaluate(self, step)

    monkeypatch.setattr(GRPOTrainer, "evaluate", killed_at_the_end)
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path, max_steps=2, eval_size=4).fit()
    monkeypatch.setattr(GRPOTrainer, "evaluate", evaluate)
    resumed = make(tmp_path, max_steps=2, eval_size=4, resume=True)
    summary = resumed.fit()
    assert "its final evaluation had not, and has now run" in capsys.readouterr().err
    assert [e["label"] for e in read(resumed.layout.evals)] == ["before", "after"]
    assert summary["after"] == straight["after"] and summary["steps"] == 2
    again = make(tmp_path, max_steps=2, eval_size=4, resume=True).fit()  # a finished run: nothing runs again
    assert "nothing left to do" in capsys.readouterr().err
    assert [e["label"] for e in read(resumed.layout.evals)] == ["before", "after"]
    assert again["after"] == summary["after"]


def test_a_full_disk_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    trainer = make(tmp_path, max_steps=4, save_steps=1)
    original = checkpoint_module.torch.save
    calls = {"n": 0}

    def save(obj, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the third checkpoint: the disk fills up half-way
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    with pytest.raises(DiskFullError, match=r"the disk filled up while writing checkpoint step-000003 .* the "
                                            r"previous checkpoint \(.*step-000002\) is intact"):
        trainer.fit()
    assert [p.name for p in sorted(trainer.layout.checkpoints.iterdir())] == ["step-000001", "step-000002"]
    assert checkpoint_problem(trainer.layout.checkpoint(2)) is None


def test_too_little_free_space_is_refused_before_writing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda path: type("U", (), {"free": 1000})())
    code = main(["train", *tiny_overrides(tmp_path, max_steps=1, save_steps=1, rewards="{format: 1.0}")])
    err = capsys.readouterr().err
    assert code == 1 and "not enough disk space for a checkpoint" in err and "0.00 GiB are free" in err


# --- numerics --------------------------------------------------------------------------------------------
def poison_loss(monkeypatch, steps: set[int], trainer_ref: list):
    import aha.trainer.grpo as grpo

    original = grpo.policy_loss

    def policy_loss(*args, **kwargs):
        loss, stats = original(*args, **kwargs)
        if trainer_ref[0].current_step in steps:
            loss = loss * float("nan")
        return loss, stats

    monkeypatch.setattr(grpo, "policy_loss", policy_loss)


def test_a_nan_loss_skips_that_update_and_training_goes_on(tmp_path, monkeypatch):
    trainer = make(tmp_path, max_steps=4, eval_size=0)
    ref = [trainer]
    original_step = trainer.train_step
    states = []

    def train_step(step):
        trainer.current_step = step
        states.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return original_step(step)

    trainer.train_step = train_step
    poison_loss(monkeypatch, {1}, ref)
    trainer.fit()
    metrics = read(trainer.layout.metrics)
    assert [m["nonfinite_skipped"] for m in metrics] == [0, 1, 0, 0]
    assert metrics[1]["nonfinite_examples"] == [4, 5, 6, 7]  # the training examples of step 2
    assert all(torch.equal(states[1][k], states[2][k]) for k in states[1])  # the poisoned step changed nothing
    assert any(not torch.equal(states[2][k], states[3][k]) for k in states[2])  # the next one did


def test_nan_gradients_are_skipped_too(tmp_path):
    trainer = make(tmp_path, max_steps=2, eval_size=0)
    param = trainer.policy.params[0]
    handle = param.register_hook(lambda grad: grad * float("nan"))
    trainer.fit()
    handle.remove()
    assert [m["nonfinite_skipped"] for m in read(trainer.layout.metrics)] == [1, 1]


def test_persistent_nans_stop_the_run_with_its_last_good_checkpoint(tmp_path, monkeypatch):
    trainer = make(tmp_path, max_steps=10, save_steps=2, eval_size=0, max_nonfinite_steps=3)
    original_step = trainer.train_step

    def train_step(step):
        trainer.current_step = step
        return original_step(step)

    trainer.train_step = train_step
    poison_loss(monkeypatch, set(range(2, 10)), [trainer])
    with pytest.raises(NonFiniteError, match=r"3 steps in a row had a non-finite loss or gradient \(the last: step "
                                             r"5\); stopped. The last good checkpoint is .*step-000004"):
        trainer.fit()
    assert checkpoint_problem(trainer.layout.checkpoint(2)) is None


# --- edge cases of the data a step sees --------------------------------------------------------------
def test_empty_completions_train_without_nan(tmp_path):
    trainer = make(tmp_path, max_steps=2, eval_size=0, rewards="{last_char_code: 1.0}")
    original = trainer.backend.generate

    def generate(prompt_ids, params, prefill="", num_samples=1, seeds=None):
        out = original(prompt_ids, params, prefill, num_samples, seeds=seeds)
        for g in out[::2]:  # every other completion is empty
            g.token_ids, g.text, g.finish_reason = [], "", "stop"
        return out

    trainer.backend.generate = generate
    trainer.fit()
    for m in read(trainer.layout.metrics):
        assert m["nonfinite_skipped"] == 0 and m["loss"] == m["loss"]


def test_a_group_larger_than_a_micro_batch_gives_the_same_update(tmp_path):
    results = []
    for micro_batch_size in (3, 64):  # a group of 8 split over micro-batches of 3, or all in one
        trainer = make(tmp_path / str(micro_batch_size), max_steps=2, eval_size=0, group_size=8,
                       micro_batch_size=micro_batch_size)
        trainer.fit()
        results.append((read(trainer.layout.metrics), trainer.model.state_dict()))
    (small, small_state), (large, large_state) = results
    assert [m["completion_length"] for m in small] == [m["completion_length"] for m in large]  # same samples
    # float sums reordered: Adam's first steps move each weight by up to lr (3e-3) whatever its gradient's size, so a
    # near-zero gradient summed in another order may move its weight by a small fraction of lr
    assert all(torch.allclose(small_state[k], large_state[k], atol=1e-4) for k in small_state)


def test_a_group_larger_than_the_generation_batch_still_samples_whole_groups(tmp_path):
    trainer = make(tmp_path, max_steps=2, eval_size=0, group_size=8, generation_batch_size=4)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    metrics = read(trainer.layout.metrics)
    assert all(m["nonfinite_skipped"] == 0 and m["trained_sequences"] > 0 for m in metrics)
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
