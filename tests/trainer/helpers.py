"""Small pieces shared by the trainer tests: a tiny task and a trivially learnable reward."""

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
