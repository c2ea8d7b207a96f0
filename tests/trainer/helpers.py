"""Small pieces shared by the trainer tests: a tiny task, trivially learnable rewards, and runs of `aha train`
in a process of their own (killed or signalled at chosen moments, see killable_run.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from aha.data.tasks import RecordsTask
from aha.rewards import REWARDS, register_reward

if "digit_share" not in REWARDS:

    @register_reward("digit_share")
    def digit_share():
        """Share of the completion's characters (after the prefill) that are digits: easy to learn."""

        def reward(completions, **columns):
            return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]

        return reward


if "last_char_code" not in REWARDS:

    @register_reward("last_char_code")
    def last_char_code():
        """The code of the completion's last character / 128: differs between almost any two samples."""

        def reward(completions, **columns):
            return [ord(c[-1]) / 128 if c else 0.0 for c in completions]

        return reward


if "always_raises" not in REWARDS:

    @register_reward("always_raises")
    def always_raises():
        """A broken reward: raises on every call."""

        def reward(completions, **columns):
            raise RuntimeError("broken reward")

        return reward


def tiny_task(n: int = 16) -> RecordsTask:
    records = [{"question": f"{i} + {i} =", "answer": str(2 * i)} for i in range(n)]
    return RecordsTask(records, records[:4], seed=0, name="tiny")


def tiny_overrides(tmp_path, **extra) -> list[str]:
    base = {"model": "tiny:llama", "prompt_template": "plain", "prefill": "", "prompts_per_step": 4,
            "group_size": 4, "max_completion_length": 12, "temperature": 1.0, "eval_size": 0,
            "save_steps": 0, "output_dir": str(tmp_path / "run"), "rewards": "{digit_share: 1.0}",
            "learning_rate": 3e-3, "micro_batch_size": 6}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def fit_until_crash(trainer, step: int) -> None:
    """Run ``trainer.fit()`` and stop it with KeyboardInterrupt as step ``step`` (from 0) begins."""
    import pytest

    original = type(trainer).train_step

    def crash(self, at):
        if at == step:
            raise KeyboardInterrupt
        return original(self, at)

    trainer.train_step = crash.__get__(trainer)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()


REPO = Path(__file__).resolve().parents[2]
KILLABLE = Path(__file__).with_name("killable_run.py")


def untimed(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith("time/")}


def run_files(run: Path) -> dict[str, object]:
    """Everything a run leaves that must match bit for bit (wall-clock timings left out)."""
    metrics = [untimed(json.loads(line)) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = sorted((run / "checkpoints").glob("step-*"))[-1]
    files = {"metrics": metrics, "samples": (run / "samples.jsonl").read_bytes(),
             "eval": (run / "eval.jsonl").read_bytes(), "final_checkpoint": final.name}
    for path in sorted(run.glob("eval-step-*.jsonl")):
        files[path.name] = path.read_bytes()
    summary = json.loads((run / "summary.json").read_text())
    files["summary"] = {k: summary[k] for k in ("steps", "before", "after")}
    return files


def weights(run: Path) -> dict[str, torch.Tensor]:
    final = sorted((run / "checkpoints").glob("step-*"))[-1]
    return load_file(final / "model" / "model.safetensors")


def write_task(path: Path) -> Path:
    rows = [{"question": f"{i} + {i} =", "answer": str(2 * i)} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def settings(run: Path, task: Path) -> list[str]:
    return [f"output_dir={run}", "model=tiny:llama", f"task={task}", "eval_size=4", "prompt_template=plain",
            "prefill=", "prompts_per_step=4", "group_size=4", "max_completion_length=12", "temperature=1.0",
            "rewards={digit_share: 1.0}", "learning_rate=3e-3", "micro_batch_size=6", "max_steps=8",
            "save_steps=2", "keep_checkpoints=2", "eval_steps=3", "max_train_minutes=0", "beta=0.05",
            "ref_sync_steps=4", "num_iterations=2", "loss_type=dapo", "lr_scheduler=linear", "warmup_steps=2"]


def launch(moment: str, run: Path, task: Path, resume: bool) -> subprocess.Popen:
    args = [sys.executable, str(KILLABLE), moment, *settings(run, task)] + (["resume=true"] if resume else [])
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


class OtherEngine:
    """The same samples as the policy's own backend, from an engine the trainer does not know as the policy itself
    (as vLLM or a server): the trainer then scores the samples with forwards of its own."""

    def __init__(self, inner):
        self.inner, self.pad_id = inner, inner.pad_id

    def generate(self, *args, **kwargs):
        return self.inner.generate(*args, **kwargs)

    def sync_weights(self):
        self.inner.sync_weights()
