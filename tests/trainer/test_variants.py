"""The algorithm suite in the trainer: DAPO's dynamic sampling and overlong filtering, PPO with a value
model, process-supervised advantages from a task's step rewards, and `aha compare`."""

import json

import pytest
import torch

from aha.cli import main
from aha.config import GRPOConfig, load_config
from aha.data.tasks import RecordsTask
from aha.rewards import REWARDS, register_reward
from aha.trainer import rl_trainer
from aha.trainer.grpo import GRPOTrainer
from aha.trainer.ppo import PPOTrainer
from tests.trainer.helpers import OtherEngine, fit_until_crash, tiny_overrides, tiny_task

if "odd_questions_vary" not in REWARDS:

    @register_reward("odd_questions_vary")
    def odd_questions_vary():
        """Constant (no spread) on even-numbered questions, the last character's code on odd ones."""

        def reward(completions, question, **columns):
            return [(ord(c[-1]) / 128 if c else 0.0) if int(q.split()[0]) % 2 else 1.0
                    for c, q in zip(completions, question)]

        return reward


def make(tmp_path, task=None, **extra):
    config = load_config(GRPOConfig, overrides=tiny_overrides(tmp_path, max_train_minutes=0, **extra))
    return rl_trainer(config, task=task or tiny_task())


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_dynamic_sampling_keeps_only_groups_with_spread_and_fills_the_step(tmp_path):
    trainer = make(tmp_path, max_steps=1, rewards="{odd_questions_vary: 1.0}", dynamic_sampling="true",
                   prompts_per_step=4, eval_size=0)
    rollouts, stats = trainer.sample_step(0)
    assert rollouts.num_groups == 4 and len(rollouts.informative_groups()) == 4  # every kept group varies
    assert all(int(ex["question"].split()[0]) % 2 == 1 for ex in rollouts.examples)
    assert stats["dynamic/sampled_groups"] == 8 and stats["dynamic/oversampling"] == 2.0  # two draws of 4


def test_dynamic_sampling_stops_at_its_cap(tmp_path):
    trainer = make(tmp_path, max_steps=1, rewards="{tag_count: 1.0}", dynamic_sampling="true",
                   dynamic_sampling_rounds=2, eval_size=0)  # a constant reward: no group ever has spread
    rollouts, stats = trainer.sample_step(0)
    assert stats["dynamic/sampled_groups"] == 4 * 3 and stats["dynamic/kept_groups"] == 4
    assert rollouts.indices == [0, 1, 2, 3]  # nothing informative: the step's own prompts, zero advantages


def test_dynamic_sampling_draws_no_round_beyond_the_completion_budget(tmp_path):
    """`aha compare` gives each variant the same max_completions: DAPO's extra rounds must not overshoot it by
    more than any variant's step does (one round of prompts_per_step groups)."""
    trainer = make(tmp_path, max_steps=3, rewards="{tag_count: 1.0}", dynamic_sampling="true",
                   dynamic_sampling_rounds=3, eval_size=0, max_completions=4 * 4 * 3)  # three rounds of 4 x 4
    _, stats = trainer.sample_step(0)
    assert trainer.config.group_size == 4 and stats["dynamic/sampled_groups"] == 4 * 3
    trainer.fit()
    metrics = read(trainer.layout.metrics)  # then the budget stops the run
    assert [(m["dynamic/sampled_groups"], m["sampled_completions"]) for m in metrics] == [(12, 48)]


def test_overlong_filtering_takes_truncated_completions_out_of_the_loss(tmp_path):
    trainer = make(tmp_path, max_steps=1, max_completion_length=1, mask_truncated="true",
                   rewards="{last_char_code: 1.0}", eval_size=0)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    metrics = read(trainer.layout.metrics)[0]
    assert metrics["truncated_rate"] == 1.0 and metrics["trained_sequences"] == 0
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_ppo_trains_a_critic_alongside_and_resumes_exactly(tmp_path):
    straight = make(tmp_path / "a", algorithm="ppo", max_steps=4, save_steps=2, loss_type="dapo",
                    rewards="{last_char_code: 1.0}", eval_size=0)
    assert isinstance(straight, PPOTrainer)
    straight.fit()
    metrics = read(straight.layout.metrics)
    assert all({"value_loss", "explained_variance", "value_mean", "return_mean"} <= m.keys() for m in metrics)
    summary = json.loads(straight.layout.summary.read_text())
    policy_params = sum(p.numel() for p in straight.policy.params)
    assert summary["trainable_parameters"] == policy_params + sum(p.numel() for p in straight.critic.parameters())
    assert (straight.layout.latest_checkpoint() / "critic.safetensors").exists()

    interrupted = make(tmp_path / "b", algorithm="ppo", max_steps=4, save_steps=2, loss_type="dapo",
                       rewards="{last_char_code: 1.0}", eval_size=0)
    fit_until_crash(interrupted, step=3)
    resumed = make(tmp_path / "b", algorithm="ppo", max_steps=4, save_steps=2, loss_type="dapo",
                   rewards="{last_char_code: 1.0}", eval_size=0, resume="true")
    resumed.fit()
    untimed = [{k: v for k, v in m.items() if not k.startswith("time/")} for m in read(resumed.layout.metrics)]
    assert untimed == [{k: v for k, v in m.items() if not k.startswith("time/")} for m in metrics]
    for key, value in straight.critic.state_dict().items():
        assert torch.equal(resumed.critic.state_dict()[key], value), key


def test_ppo_with_the_kl_in_the_reward(tmp_path):
    trainer = make(tmp_path, algorithm="ppo", beta=0.1, kl_in_reward="true", max_steps=2,
                   rewards="{last_char_code: 1.0}", eval_size=0)
    trainer.fit()
    assert all("kl" not in m and m["nonfinite_skipped"] == 0 for m in read(trainer.layout.metrics))


def test_ppo_takes_the_policys_side_of_the_kl_in_the_reward_from_the_decode_loop(tmp_path):
    """The policy's log-probs of its own samples come from the loop that drew them; only the reference runs forward,
    and the step equals the one whose policy log-probs a forward computed."""

    runs = {}
    for name in ("loop", "forward"):
        trainer = make(tmp_path / name, algorithm="ppo", beta=0.1, kl_in_reward="true", max_steps=2,
                       rewards="{last_char_code: 1.0}", eval_size=0)
        if name == "forward":
            trainer.backend = OtherEngine(trainer.backend)
        scored = []
        logprobs = trainer._logprobs

        def counting(model, *args, _scored=scored, _inner=logprobs, _policy=trainer.model, **kwargs):
            if model is _policy and not torch.is_grad_enabled():
                _scored.append(1)
            return _inner(model, *args, **kwargs)

        trainer._logprobs = counting
        trainer.fit()
        runs[name] = (read(trainer.layout.metrics), len(scored))
    (loop, loop_scored), (forward, forward_scored) = runs["loop"], runs["forward"]
    assert loop_scored == 0 and forward_scored > 0
    for a, b in zip(loop, forward):
        assert a["completion_length"] == b["completion_length"]  # the same samples
        for key in ("reward", "loss", "grad_norm", "value_mean", "return_mean"):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-6), key


def test_the_critic_runs_each_prompt_once_with_the_values_and_gradients_of_whole_sequences(tmp_path):
    """The critic scores and learns through the trainer's prompt pass (the shared start of the prompts once, each
    prompt's rest once, the completions from their cache): the values and gradients of running every row's whole
    sequence through it, for far fewer tokens."""
    import copy
    import functools

    from aha.algorithms import value_loss
    from aha.models import fold_row_gradients
    from aha.types import build_train_batch

    trainer = make(tmp_path, algorithm="ppo", micro_batch_size=2, group_size=3, max_grad_norm=0, value_clip=0.2)
    lengths = [5, 1, 3, 4, 2, 6]
    system = list(range(20, 29))  # the 9 tokens both prompts start with
    batch = build_train_batch([system + [7]] * 3 + [system + [9, 4]] * 3, [[10 + i] * n for i, n in enumerate(lengths)],
                              torch.zeros(6), pad_id=2, group_size=3)
    mask, p = batch.completion_mask, batch.prompt_width
    critic = trainer.critic
    torch.manual_seed(0)
    with torch.no_grad():  # a zero head values everything 0: give it a direction
        critic.head.weight.normal_()
        critic.head.bias.fill_(0.1)
    reference = copy.deepcopy(critic)

    def whole_sequences(model):  # the plain critic: every row's prompt and completion through the body
        hidden = model.body(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            position_ids=batch.position_ids).last_hidden_state
        return model.head(hidden[:, p - 1 : p - 1 + batch.completion_width]).squeeze(-1) * mask

    from aha.models import reusable_cache

    assert reusable_cache(critic)  # its one-token probe of the cache's kind, once per model, before the count
    tokens = []
    forward = critic.body.forward

    @functools.wraps(forward)
    def counting(*args, _inner=forward, **kwargs):
        tokens.append(kwargs["input_ids"].numel())
        return _inner(*args, **kwargs)

    critic.body.forward = counting
    values = trainer._critic_values(batch)
    with torch.no_grad():
        expected = whole_sequences(reference)
    assert torch.allclose(values, expected, atol=1e-5) and expected.abs().max() > 0.1
    # the shared 9 tokens once, the rests [7] and [9, 4] left-padded to 2 (4), and the completions less their last
    # token in length-sorted pairs 6 5 | 4 3 | 2 1 (2 x 5 + 2 x 3 + 2 x 1): 31 tokens against 6 x (11 + 6) = 102
    assert sum(tokens) == 31

    returns = (values + torch.linspace(-1, 1, values.numel()).view_as(values)) * mask
    scored = whole_sequences(reference)
    scored.retain_grad()
    loss, _ = value_loss(scored, values, returns, mask, clip=0.2)
    loss.backward()
    # the head's bias gradient is the sum of the tokens' value gradients, of both signs: a reordered float32 sum of
    # them is off by a share of the sum of their magnitudes, not of what is left after they cancel
    scale = {"head.bias": scored.grad.abs().sum()}
    fold_row_gradients(reference)  # its embedding's gradient as rows (a copy of the trainer's critic): made dense
    trainer._values, trainer._returns = values, returns
    stepped = {}  # the gradients the critic's optimiser steps with
    step = trainer.critic_optimizer.step

    def snapshot(*args, _inner=step, **kwargs):
        stepped.update({name: p.grad.clone() for name, p in critic.named_parameters() if p.grad is not None})
        return _inner(*args, **kwargs)

    trainer.critic_optimizer.step = snapshot
    trainer._update_critic(batch)
    for (name, mine), theirs in zip(critic.named_parameters(), reference.parameters()):
        assert name in stepped and theirs.grad is not None, name
        a, b = stepped[name], theirs.grad.to_dense()
        size = scale.get(name, b.abs().max())
        assert (a - b).abs().max() <= 1e-5 * size and b.abs().max() > 0, name  # float32 sums, reordered
    assert all(p.grad is None for p in critic.parameters())  # none held between steps: their memory is free


class SteppedTask(RecordsTask):
    """A task that judges reasoning steps: a step ends at every '+' the completion writes, worth 1."""

    def step_rewards(self, examples, generations):
        return [[(i, 1.0 if "+" in g.text[: i + 1] else 0.0) for i, _ in enumerate(g.token_ids) if i % 3 == 2]
                for g in generations]


def test_process_advantages_come_from_the_tasks_step_rewards(tmp_path):
    base = tiny_task()
    task = SteppedTask(base.records, base.heldout, seed=0, name="stepped")
    trainer = make(tmp_path, task=task, advantage_estimator="process", max_steps=2, rewards="{digit_share: 1.0}",
                   eval_size=0)
    trainer.fit()
    assert all(m["nonfinite_skipped"] == 0 for m in read(trainer.layout.metrics))


def test_the_process_estimator_needs_a_task_with_step_rewards(tmp_path, capsys):
    code = main(["train", *tiny_overrides(tmp_path, advantage_estimator="process")])
    assert code == 2 and "advantage_estimator: process needs a task that gives step rewards" in capsys.readouterr().err


def test_compare_runs_each_variant_under_the_same_budget_and_reads_finished_ones_back(tmp_path, capsys):
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i} + {i} =", "answer": str(2 * i)}) + "\n" for i in range(20)))
    args = ["compare", "model=tiny:qwen2", f"task={data}", "eval_size=4", "eval_steps=1", "prompt_template=plain",
            "prefill=", "prompts_per_step=2", "group_size=4", "max_completion_length=8", "temperature=1.0",
            "max_steps=50", "rewards={format: 0.5, accuracy: 1.0}", "--variants", "grpo,ppo", "--budget-minutes", "5",
            "--budget-completions", "24", "--output-dir", str(tmp_path / "cmp")]
    assert main(args) == 0
    results = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert set(results) == {"grpo", "ppo"}
    for r in results.values():
        assert r["sampled_completions"] == 24 and r["steps"] == 3  # 2 prompts x 4 a step: 24 in 3 steps
    assert results["ppo"]["trainable_parameters"] > results["grpo"]["trainable_parameters"]
    assert (tmp_path / "cmp" / "compare.png").exists() and "| ppo |" in (tmp_path / "cmp" / "compare.md").read_text()
    metrics = (tmp_path / "cmp" / "ppo" / "metrics.jsonl").read_text()
    assert main(args) == 0  # again: read back, nothing trained twice
    assert (tmp_path / "cmp" / "ppo" / "metrics.jsonl").read_text() == metrics
    assert "finished already" in capsys.readouterr().err


def test_an_unknown_variant_is_refused(tmp_path, capsys):
    assert main(["compare", "--variants", "grpo,ppo2", "--output-dir", str(tmp_path)]) == 2
    assert "--variants: unknown variant 'ppo2'; valid: grpo, dr_grpo, dapo" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["grpo", "ppo"])
def test_both_algorithms_learn_the_trivially_learnable_task(tmp_path, name):
    trainer = make(tmp_path, algorithm=name, max_steps=30, prompts_per_step=4, group_size=8, loss_type="dapo",
                   eval_size=0, value_learning_rate=3e-3)
    trainer.fit()
    rewards = [m["reward"] for m in read(trainer.layout.metrics)]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.15, rewards
    assert isinstance(trainer, PPOTrainer if name == "ppo" else GRPOTrainer)
