"""Data parallelism with torch.distributed: 2 CPU processes (gloo) launched by torchrun train GRPO and SFT on a
tiny model exactly as one process does on the same global batch — the same completions and losses, the same
weights within float tolerance — write the logs and checkpoints once, and a checkpoint written by 2 ranks
resumes on 1."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aha.run import RunLayout
from aha.run.world import World
from tests.trainer.test_sft import write_rows

ROOT = Path(__file__).resolve().parents[2]
GRPO = ["model=tiny:qwen2", "task=chain_sum", "prompts_per_step=4", "group_size=4", "max_completion_length=12",
        "temperature=1.0", "eval_size=6", "eval_steps=2", "save_steps=2", "micro_batch_size=4",
        "learning_rate=1e-3", "threads=1", "rewards={repetition: {weight: 1.0, unit: chars, ngram_size: 1}}"]
"""Four groups in micro-batches of four rows: each rank samples two groups and trains on its micro-batches. The
reward (repeated character pairs) differs between a random model's samples, so every group trains."""


def aha(tmp_path, ranks: int, command: str, *settings: str) -> subprocess.CompletedProcess:
    """``aha COMMAND settings`` as one process, or as ``ranks`` processes under torchrun (gloo, this machine)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if ranks == 1:
        launch = [sys.executable, "-m", "aha"]
    else:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                  "-m", "aha"]
    done = subprocess.run([*launch, command, *settings], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    folder = RunLayout(run).checkpoint(step) / "model"
    return {k: v for shard in sorted(folder.glob("*.safetensors")) for k, v in load_file(shard).items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Equal within 5% of one AdamW step (lr 1e-3): Adam moves a weight by ~lr whatever the size of its gradient,
    so a weight whose gradient is near Adam's eps (1e-8) moves by an amount that the order of the gradient's sum
    over micro-batches (one process, or two and an all-reduce) changes by up to ~1e-5."""
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=5e-5, msg=name)


def test_world_shares_are_contiguous_and_cover_every_item():
    for size in (1, 2, 3, 5):
        for count in (0, 1, 4, 7, 64):
            shares = [World(rank=r, world_size=size).share(count) for r in range(size)]
            assert [i for s in shares for i in s] == list(range(count))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


@pytest.mark.parametrize("finished", [True, False])
def test_a_finished_command_waits_for_every_rank_before_leaving_and_a_failed_one_does_not(monkeypatch, finished):
    """A rank that leaves while gloo's worker threads still free its last collective's tensors aborts in
    interpreter shutdown; a rank whose command failed must not wait for ranks that may never come."""
    import aha.run.world as world

    calls = []
    monkeypatch.setattr(world, "_WORLD", World(rank=1, world_size=2))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda: calls.append("destroy"))
    world.leave_world(finished)
    assert calls == (["barrier", "destroy"] if finished else ["destroy"])
    assert world.current_world().world_size == 1


def test_grpo_on_two_processes_equals_one_and_resumes_on_one(tmp_path):
    aha(tmp_path, 1, "train", *GRPO, "max_steps=3", "output_dir=one")
    two = aha(tmp_path, 2, "train", *GRPO, "max_steps=3", "output_dir=two")
    one_metrics, two_metrics = lines(tmp_path / "one/metrics.jsonl"), lines(tmp_path / "two/metrics.jsonl")
    assert [m["step"] for m in two_metrics] == [1, 2, 3]  # written once
    for a, b in zip(one_metrics, two_metrics):
        assert a["generated_tokens"] == b["generated_tokens"] and a["reward"] == b["reward"]  # the same samples
        assert a["trained_sequences"] == b["trained_sequences"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
        assert a["entropy"] == pytest.approx(b["entropy"], rel=1e-4)
    assert all(m["trained_sequences"] > 4 for m in one_metrics)  # more than one micro-batch: both ranks trained
    one_samples = [s["completion"] for s in lines(tmp_path / "one/samples.jsonl")]
    assert one_samples == [s["completion"] for s in lines(tmp_path / "two/samples.jsonl")]
    assert lines(tmp_path / "one/eval.jsonl") == lines(tmp_path / "two/eval.jsonl")  # greedy, split over ranks
    layout = RunLayout(tmp_path / "two")
    assert [path for _, path in layout.checkpoint_dirs()] == [layout.checkpoint(2), layout.checkpoint(3)]
    assert len(list(layout.checkpoints.iterdir())) == 2  # written once, nothing left half-written
    assert_same_weights(weights(tmp_path / "one", 3), weights(tmp_path / "two", 3))
    assert (two.stdout + two.stderr).count("step 3/3 reward") == 1  # one process speaks for the run

    # the 2-rank checkpoint goes on on one process as an uninterrupted one-process run does
    aha(tmp_path, 1, "train", *GRPO, "max_steps=4", "output_dir=two", "resume=true")
    aha(tmp_path, 1, "train", *GRPO, "max_steps=4", "output_dir=straight")
    assert [m["step"] for m in lines(tmp_path / "two/metrics.jsonl")] == [1, 2, 3, 4]
    resumed, straight = lines(tmp_path / "two/metrics.jsonl")[-1], lines(tmp_path / "straight/metrics.jsonl")[-1]
    assert resumed["reward"] == straight["reward"]
    assert resumed["loss"] == pytest.approx(straight["loss"], rel=1e-4, abs=1e-6)
    assert_same_weights(weights(tmp_path / "two", 4), weights(tmp_path / "straight", 4))


def check_sft_on_two_processes_equals_one(tmp_path, *settings: str, two: tuple[str, ...] = ()) -> None:
    """``aha sft`` on 1 and on 2 processes (``two``: settings of the 2-process run only): the same trained
    tokens, losses, held-out losses and final weights."""
    data = write_rows(tmp_path / "data.jsonl", 24)
    settings = ("model=tiny:qwen2", f"dataset={data}", "field_map={prompt: question, completion: response}",
                "batch_size=8", "micro_batch_size=3", "learning_rate=3e-3", "num_epochs=1", "save_steps=2",
                "prompt_template=chat", "threads=1", *settings)
    aha(tmp_path, 1, "sft", *settings, "output_dir=one")
    aha(tmp_path, 2, "sft", *settings, *two, "output_dir=two")
    one, two_metrics = lines(tmp_path / "one/metrics.jsonl"), lines(tmp_path / "two/metrics.jsonl")
    assert [m["step"] for m in two_metrics] == [m["step"] for m in one]
    for a, b in zip(one, two_metrics):
        assert a["trained_tokens"] == b["trained_tokens"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    evals_one, evals_two = lines(tmp_path / "one/eval.jsonl"), lines(tmp_path / "two/eval.jsonl")
    assert evals_one and [e["loss"] for e in evals_one] == pytest.approx([e["loss"] for e in evals_two], rel=1e-5)
    last = one[-1]["step"]
    assert_same_weights(weights(tmp_path / "one", last), weights(tmp_path / "two", last))


def test_sft_on_two_processes_equals_one(tmp_path):
    check_sft_on_two_processes_equals_one(tmp_path)


def test_commands_other_than_train_and_sft_refuse_several_processes(tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "aha", "eval", "tiny:qwen2"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "runs as one process" in done.stderr


def test_more_processes_than_prompts_is_a_config_error(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "aha", "train", "model=tiny:qwen2", "prompts_per_step=1", "output_dir=r"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "prompts_per_step: 1 prompts cannot be split over 2 processes" in done.stderr
