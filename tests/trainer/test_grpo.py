import json

import pytest
import torch

from aha.config import GRPOConfig, load_config
from aha.run import RunDirError
from aha.trainer.grpo import GRPOTrainer
from tests.trainer.helpers import OtherEngine, fit_until_crash, tiny_overrides, tiny_task


def make(tmp_path, **extra) -> GRPOTrainer:
    config = load_config(GRPOConfig, overrides=tiny_overrides(tmp_path, **extra))
    return GRPOTrainer.from_config(config, task=tiny_task())


def read_metrics(trainer) -> list[dict]:
    return [json.loads(line) for line in trainer.layout.metrics.read_text().splitlines()]


def untimed(record: dict) -> dict:
    """A metrics line without its wall-clock measurements (the only values that differ between runs)."""
    return {k: v for k, v in record.items() if not k.startswith("time/")}


def test_a_few_steps_change_the_parameters_and_write_the_run_dir(tmp_path):
    trainer = make(tmp_path, max_steps=2, save_steps=1)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    run = trainer.layout.root
    assert [m["step"] for m in read_metrics(trainer)] == [1, 2]
    assert (run / "config.yaml").exists() and (run / "samples.jsonl").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    # the checkpoint is a plain HF folder
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "step-000002" / "model")
    assert torch.equal(reloaded.state_dict()["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    metrics = read_metrics(trainer)[0]
    for key in ("reward", "reward/digit_share", "completion_length", "truncated_rate", "clip_ratio", "entropy",
                "zero_std_groups", "time/step", "time/generated_tokens_per_s", "grad_norm", "lr"):
        assert key in metrics


def test_a_reward_that_raises_costs_its_samples_and_is_counted_never_the_run(tmp_path):
    trainer = make(tmp_path, max_steps=1, rewards="{digit_share: 1.0, always_raises: 0.5}")
    trainer.fit()
    metrics = read_metrics(trainer)[0]
    assert metrics["reward_failures/always_raises"] == 16  # 4 prompts x 4 samples, each retried alone
    assert metrics["reward_failures/digit_share"] == 0
    assert metrics["reward_failures"] == 16 and metrics["unscored"] == 0  # digit_share still scores them all
    assert metrics["reward_std/digit_share"] >= 0.0


def test_reward_goes_up_on_a_trivially_learnable_task(tmp_path):
    trainer = make(tmp_path, max_steps=30, prompts_per_step=4, group_size=8)
    trainer.fit()
    rewards = [m["reward"] for m in read_metrics(trainer)]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.2, rewards


@pytest.mark.parametrize("extra", [{}, {"beta": 0.1, "num_iterations": 2, "loss_type": "dapo"},
                                   {"lora_rank": 4, "beta": 0.05, "learning_rate": 1e-2}])
def test_resume_gives_the_same_next_steps_as_an_uninterrupted_run(tmp_path, extra):
    uninterrupted = make(tmp_path / "a", max_steps=4, save_steps=2, lr_scheduler="linear", warmup_steps=1, **extra)
    uninterrupted.fit()
    expected = read_metrics(uninterrupted)

    interrupted = make(tmp_path / "b", max_steps=4, save_steps=2, lr_scheduler="linear", warmup_steps=1, **extra)
    fit_until_crash(interrupted, step=2)

    resumed = make(tmp_path / "b", max_steps=4, save_steps=2, lr_scheduler="linear", warmup_steps=1, resume=True,
                   **extra)
    resumed.fit()
    got = read_metrics(resumed)
    assert [m["step"] for m in got] == [1, 2, 3, 4]
    assert [untimed(m) for m in got] == [untimed(m) for m in expected]  # bit for bit
    for key, value in uninterrupted.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_every_completion_truncated_still_trains(tmp_path):
    # one token per completion, never an end-of-sequence: every sample is cut at the length limit
    trainer = make(tmp_path, max_steps=1, max_completion_length=1, rewards="{last_char_code: 1.0}")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    metrics = read_metrics(trainer)[0]
    assert metrics["truncated_rate"] == 1.0
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_zero_variance_groups_produce_no_nan_and_no_update(tmp_path):
    # a constant reward: every group has zero spread, so zero advantage everywhere
    trainer = make(tmp_path, max_steps=2, rewards="{tag_count: 1.0}")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    for metrics in read_metrics(trainer):
        assert metrics["zero_std_groups"] == 1.0 and metrics["trained_sequences"] == 0
        assert all(v is not None for v in metrics.values())
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_an_existing_run_is_never_overwritten(tmp_path):
    make(tmp_path, max_steps=1).fit()
    with pytest.raises(RunDirError, match="already holds a run; continue it with resume=true"):
        make(tmp_path, max_steps=1)


def test_held_out_evaluation_before_and_after(tmp_path):
    trainer = make(tmp_path, max_steps=1, eval_size=4)
    summary = trainer.fit()
    assert set(summary["before"]) >= {"strict_accuracy", "lenient_accuracy", "format_rate"}
    lines = trainer.layout.evals.read_text().splitlines()
    assert [json.loads(x)["label"] for x in lines] == ["before", "after"]


class CountingBackend:
    """A backend handed to the trainer: delegates to the transformers one, counts weight syncs."""

    def __init__(self, inner):
        self.inner = inner
        self.pad_id = inner.pad_id
        self.syncs = 0

    def generate(self, *args, **kwargs):
        return self.inner.generate(*args, **kwargs)

    def sync_weights(self):
        self.syncs += 1


def test_the_trainer_is_handed_its_backend_and_syncs_it_after_every_optimiser_step(tmp_path):
    built = make(tmp_path / "a", max_steps=1)
    backend = CountingBackend(built.backend)
    trainer = GRPOTrainer(built.config, built.layout, built.policy, backend, built.task, built.rewards)
    trainer.config.max_steps, trainer.config.num_iterations = 3, 2
    trainer.fit()
    assert backend.syncs == 3 * 2


def test_engine_logprobs_match_the_trainers_own(tmp_path):
    from aha.algorithms import token_logprobs
    from aha.rollout import SamplingParams
    from aha.trainer.forward import completion_logits
    from aha.types import build_train_batch

    trainer = make(tmp_path, max_steps=1)
    prompts = [trainer.policy.tokenizer(q, add_special_tokens=False)["input_ids"] for q in ("3 + 3 =", "12 + 1 =")]
    torch.manual_seed(0)
    gens = trainer.backend.generate(prompts, SamplingParams(10, temperature=0.8, logprobs=True), num_samples=3)
    assert all(len(g.logprobs) == len(g.token_ids) for g in gens)
    batch = build_train_batch([p for p in prompts for _ in range(3)], [g.token_ids for g in gens], torch.zeros(6),
                              trainer.backend.pad_id, 3, engine_logprobs=[g.logprobs for g in gens])
    with torch.no_grad():
        mine = token_logprobs(completion_logits(trainer.model, batch), batch.completion_ids, temperature=0.8)
    mask = batch.completion_mask.bool()
    assert torch.allclose(mine[mask], batch.engine_logprobs[mask], atol=1e-4)


def test_micro_batches_hold_rows_of_similar_length_whatever_their_group(tmp_path, monkeypatch):
    from aha.types import build_train_batch

    trainer = make(tmp_path, group_size=4, micro_batch_size=3)  # max_completion_length 12: 36 positions
    lengths = [9, 1, 2, 8, 3, 7, 6, 4]  # two groups of 4, long and short completions in each
    batch = build_train_batch([[5, 6]] * 4 + [[7, 8, 9]] * 4, [[10] * n for n in lengths], torch.zeros(8), pad_id=2,
                              group_size=4)
    batch.advantages = torch.tensor([1.0, -1.0, 0.5, 0.0, 1.0, -1.0, 0.5, -0.5])  # row 3: no gradient, skipped
    # micro-batches of up to 3 x 12 padded completion positions
    rows = [r.tolist() for r in trainer._micro_batch_rows(batch)]
    assert rows == [[0, 5, 6], [7, 4, 2, 1]]  # lengths 9 7 6 | 4 3 2 1: each pads to its own longest
    assert [batch.select(torch.tensor(r)).completion_width for r in rows] == [9, 4]
    # and of at most ROWS_PER_MICRO_BATCH x micro_batch_size rows
    monkeypatch.setattr("aha.trainer.grpo.ROWS_PER_MICRO_BATCH", 1)
    rows = [r.tolist() for r in trainer._micro_batch_rows(batch)]
    assert rows == [[0, 5, 6], [7, 4], [2, 1]]  # lengths 9 7 6 | 4 3 | 2 1 (27 + 8 + 4 padded; 9 7 6 | 4 3 2 | 1: 40)
    assert [batch.select(torch.tensor(r)).completion_width for r in rows] == [9, 4, 2]


def test_micro_batches_by_positions_pad_to_their_first_row():
    from aha.utils.sequences import split_by_positions

    lengths = torch.tensor([5, 40, 12, 12, 3, 30, 1])
    rows = lengths.argsort(descending=True, stable=True)  # 1 5 2 3 0 4 6
    # 40 and 30 alone (2 x 30 > 48); 12 12 5 3 1 needs two (5 x 12 > 48): of those, 12 12 | 5 3 1 pads the least
    # (24 + 15 positions; 12 12 5 3 | 1: 48 + 1)
    parts = [p.tolist() for p in split_by_positions(rows, lengths, 48, most_rows=8)]
    assert parts == [[1], [5], [2, 3], [0, 4, 6]]
    assert [p.tolist() for p in split_by_positions(rows, lengths, 48, most_rows=2)] == [[1], [5], [2, 3], [0, 4], [6]]
    # by rows alone: 40 30 12 | 12 5 3 1 (120 + 48 padded; 40 30 12 12 | 5 3 1: 160 + 15)
    assert [p.tolist() for p in split_by_positions(rows, lengths, 1000, most_rows=4)] == [[1, 5, 2], [3, 0, 4, 6]]
    assert [p.tolist() for p in split_by_positions(rows[:1], lengths, 8, 8)] == [[1]]  # longer than the budget: alone
    assert split_by_positions(rows[:0], lengths, 48, 8) == []


def test_an_entropy_bonus_trains_rows_without_advantage(tmp_path):
    from aha.types import build_train_batch

    batch = build_train_batch([[5, 6]] * 4, [[10] * n for n in (3, 2, 4, 1)], torch.zeros(4), pad_id=2, group_size=4)
    batch.advantages = torch.zeros(4)  # a group without reward spread: no policy-gradient signal
    assert make(tmp_path / "plain", group_size=4)._micro_batch_rows(batch) == []
    rows = make(tmp_path / "bonus", group_size=4, entropy_coef=0.01)._micro_batch_rows(batch)
    assert sorted(int(r) for part in rows for r in part) == [0, 1, 2, 3]  # its entropy still has a gradient


@pytest.mark.parametrize("extra", [{"beta": 0.1}, {"num_iterations": 2}])
def test_old_and_reference_logprobs_with_prompts_run_once_equal_the_plain_pass(tmp_path, extra):
    runs = []
    for share in ("true", "false"):
        trainer = make(tmp_path / share, max_steps=2, share_prompt_prefix=share, **extra)
        trainer.fit()
        runs.append(read_metrics(trainer))
    for shared, plain in zip(*runs):
        assert shared["completion_length"] == plain["completion_length"]  # the same samples
        for key in ("loss", "kl", "clip_ratio", "grad_norm"):
            if key in plain:
                assert shared[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-6), key



def test_the_old_logprobs_of_several_passes_come_from_the_decode_loop_not_a_forward(tmp_path):
    """num_iterations > 1 needs the sampling policy's log-probs; the policy's own decode loop drew the tokens
    with them, so no forward computes them again — and the updates equal those of the forward's log-probs."""
    runs = {}
    for name in ("loop", "forward"):
        trainer = make(tmp_path / name, max_steps=2, num_iterations=2, group_size=4)
        if name == "forward":
            trainer.backend = OtherEngine(trainer.backend)
        scored = []
        logprobs = trainer._logprobs

        def counting(*args, _scored=scored, _inner=logprobs, **kwargs):
            if not torch.is_grad_enabled():  # old and reference log-probs are scored without a graph
                _scored.append(1)
            return _inner(*args, **kwargs)

        trainer._logprobs = counting
        trainer.fit()
        runs[name] = (read_metrics(trainer), len(scored))
    (loop, loop_scored), (forward, forward_scored) = runs["loop"], runs["forward"]
    assert loop_scored == 0 and forward_scored > 0
    for a, b in zip(loop, forward):
        assert a["completion_length"] == b["completion_length"]  # the same samples
        for key in ("loss", "clip_ratio", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-6), key


def test_a_batch_moves_to_the_models_device_whole():
    from aha.types import build_train_batch

    batch = build_train_batch([[5, 6], [7]], [[1, 2, 3], [4]], torch.tensor([1.0, -1.0]), pad_id=0,
                              engine_logprobs=[[-0.1, -0.2, -0.3], [-0.4]])
    assert batch.to("cpu") is batch  # already there: nothing copied
    moved = batch.to("meta")
    tensors = {name: value for name, value in vars(moved).items() if isinstance(value, torch.Tensor)}
    assert set(tensors) >= {"input_ids", "completion_mask", "advantages", "group_ids", "engine_logprobs"}
    assert all(t.device.type == "meta" for t in tensors.values()) and moved.old_logprobs is None
    assert moved.prompt_width == batch.prompt_width and batch.input_ids.device.type == "cpu"


def test_log_probs_are_taken_on_the_device_of_the_models_logits(tmp_path, monkeypatch):
    """Batches are built on the CPU; on a GPU the logits (or the last hidden states, with the output layer fused)
    are on the GPU, and the labels must follow them (a gather across devices fails there). Outputs on the meta
    device stand for the GPU's."""
    import aha.trainer.forward as forward
    from aha.types import build_train_batch

    trainer = make(tmp_path)
    batch = build_train_batch([[5, 6]] * 2, [[1, 2, 3], [4]], torch.zeros(2), pad_id=0, group_size=2)
    seen = []

    def scored(logits, labels, *args):
        seen.append((logits.device, labels.device))
        return torch.zeros(labels.shape, device=logits.device), torch.zeros(labels.shape, device=logits.device)

    monkeypatch.setattr(forward, "token_logprobs_and_entropy", scored)
    monkeypatch.setattr(forward, "token_logprobs", lambda logits, labels, *args: scored(logits, labels)[0])
    monkeypatch.setattr(forward, "linear_token_logprobs",
                        lambda hidden, layer, labels, temperature, entropy, *args:
                        scored(hidden, labels) if entropy else scored(hidden, labels)[0])

    class OnAnotherDevice:
        def __init__(self, layer):
            self.layer = layer  # None: the logits path; else the output layer the outputs skipped

        def completion_logits(self, mb):
            return torch.empty(mb.size, mb.completion_width, 11, device="meta")

    for layer in (None, trainer.model.get_output_embeddings()):
        trainer._logprobs(trainer.model, batch, OnAnotherDevice(layer), entropy=True)
        trainer._logprobs(trainer.model, batch, OnAnotherDevice(layer))
    assert seen == [(torch.device("meta"), torch.device("meta"))] * 4
