"""`aha distill` end to end on tiny models, and the two distillation losses beyond response SFT: the KL to a
teacher's next-token distribution (logit) and the teacher scoring the student's own samples (on-policy)."""

import json
import math

import pytest
import torch

from aha.cli import main
from aha.config import GRPOConfig, SFTConfig, load_config
from aha.models import char_tokenizer, load_model
from aha.trainer.grpo import GRPOTrainer
from aha.trainer.sft import SFTTrainer, distillation_kl
from aha.types import build_train_batch


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_distillation_kl_hand_computed():
    # teacher p = softmax([ln 3, 0]) = [0.75, 0.25], student q = [0.5, 0.5]:
    # KL(p || q) = 0.75 ln(1.5) + 0.25 ln(0.5) = 0.304099 - 0.173287 = 0.130812
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    assert distillation_kl(student, teacher).item() == pytest.approx(0.130812, abs=1e-6)
    assert distillation_kl(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)
    # at temperature 2: p = softmax([ln 3 / 2, 0]) = [0.633975, 0.366025], q unchanged:
    # KL = 0.633975 ln(1.267949) + 0.366025 ln(0.732051) = 0.150505 - 0.114165 = 0.036340, times 2^2
    assert distillation_kl(student, teacher, temperature=2.0).item() == pytest.approx(4 * 0.036340, abs=1e-5)
    # row chunks add up
    many_s, many_t = torch.randn(7, 5), torch.randn(7, 5)
    assert distillation_kl(many_s, many_t, chunk_size=2).item() == pytest.approx(
        distillation_kl(many_s, many_t).item(), abs=1e-5)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny teacher with sharp opinions: SFT of a random model on a memorisable set."""
    root = tmp_path_factory.mktemp("teacher")
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i} + {i} =", "completion": f"<think>{i}+{i}</think> "
                                        f"<answer>{2 * i}</answer>"}) + "\n" for i in range(24)))
    config = load_config(SFTConfig, overrides=[
        "model=tiny:qwen2", f"dataset={data}", f"output_dir={root / 'run'}", "batch_size=8", "micro_batch_size=8",
        "num_epochs=25", "learning_rate=5e-3", "prompt_template=plain", "eval_fraction=0", "save_steps=0",
        "eval_before=false"])
    SFTTrainer.from_config(config).fit()
    return root / "run"


def first_token_kl(student, teacher, tokenizer, prompt="3 + 3 =") -> float:
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        s = torch.log_softmax(student(ids).logits[0, -1], -1)
        t = torch.log_softmax(teacher(ids).logits[0, -1], -1)
    return float((s.exp() * (s - t)).sum())


def on_policy_config(tmp_path, teacher_dir, *overrides: str, question: str = "{i} + {i} =", count: int = 24,
                     run: str = "run") -> GRPOConfig:
    """GRPO on ``count`` sums with the tiny teacher and no reward: on-policy distillation alone."""
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question": question.format(i=i), "answer": str(2 * i)}) + "\n"
                                 for i in range(count)))
    return load_config(GRPOConfig, overrides=[
        "model=tiny:llama", f"teacher={teacher_dir}", "rewards={}", f"task={questions}", "eval_size=0",
        "prompt_template=plain", "prefill=", "save_steps=0", "max_train_minutes=0", f"output_dir={tmp_path / run}",
        *overrides])


def test_on_policy_distillation_moves_the_student_towards_the_teacher(tmp_path, teacher_dir):
    config = on_policy_config(tmp_path, teacher_dir, "max_steps=25", "prompts_per_step=4", "group_size=4",
                              "max_completion_length=16", "temperature=1.0", "learning_rate=2e-3")
    trainer = GRPOTrainer.from_config(config)
    before = first_token_kl(trainer.model, trainer.teacher, trainer.policy.tokenizer)
    trainer.fit()
    after = first_token_kl(trainer.model, trainer.teacher, trainer.policy.tokenizer)
    assert after < 0.85 * before, (before, after)  # the exact reverse KL of the first token's distribution
    metrics = read(trainer.layout.metrics)
    assert all("teacher_reverse_kl" in m and m["reward"] == 0.0 for m in metrics)


def test_on_policy_distillation_runs_each_prompt_once_for_the_same_reverse_kl(tmp_path, teacher_dir):
    """The teacher and the student score a batch's prompts once for all its micro-batches (as the policy's
    training pass does), not once per micro-batch: fewer tokens through the teacher, the same numbers."""
    results = {}
    for share in ("true", "false"):
        config = on_policy_config(tmp_path, teacher_dir, "max_steps=2", "prompts_per_step=4", "group_size=4",
                                  "micro_batch_size=1", "max_completion_length=8", "temperature=1.0",
                                  f"share_prompt_prefix={share}", question="What is {i} + {i}? Answer:", run=share)
        trainer = GRPOTrainer.from_config(config)
        tokens = []
        forward = trainer.teacher.forward

        def counting(*args, **kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            tokens.append(ids.numel())
            return forward(*args, **kwargs)

        trainer.teacher.forward = counting
        trainer.fit()
        results[share] = ([m["teacher_reverse_kl"] for m in read(trainer.layout.metrics)], sum(tokens))
    (shared_kl, shared_tokens), (plain_kl, plain_tokens) = results["true"], results["false"]
    assert shared_kl == pytest.approx(plain_kl, rel=1e-4, abs=1e-6)
    assert shared_tokens < 0.8 * plain_tokens, (shared_tokens, plain_tokens)


def test_on_policy_distillation_gives_each_row_its_own_gap_whatever_order_the_rows_are_scored_in(tmp_path,
                                                                                                  teacher_dir):
    """With the prompts run once, rows are scored longest first; each row's advantage must still be its own
    teacher-student gap, as in the plain pass that scores them in order."""
    config = on_policy_config(tmp_path, teacher_dir, "prompts_per_step=2", "group_size=3", "micro_batch_size=2",
                              "max_completion_length=16", count=4)
    trainer = GRPOTrainer.from_config(config)
    encode = lambda text: trainer.policy.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompts = [encode("1 + 1 =")] * 3 + [encode("12 + 12 =")] * 3
    completions = [encode(text) for text in (" <think>1+1</think> <answer>2</answer>", " 2", " <think>",
                                             " <answer>24</answer>", " <think>12+12=24</think>", " 4")]

    def advantages(share: bool) -> torch.Tensor:
        object.__setattr__(trainer.config, "share_prompt_prefix", share)
        batch = build_train_batch(prompts, completions, torch.zeros(6), trainer.backend.pad_id, 3)
        trainer._add_teacher_advantages(batch)
        return batch.advantages  # [6, C]: teacher_weight * (log p_teacher - log p_student) per token

    once = advantages(True)
    assert once.abs().sum() > 0
    torch.testing.assert_close(once, advantages(False), rtol=1e-4, atol=1e-5)


def test_on_policy_distillation_takes_the_students_log_probs_from_the_decode_loop(tmp_path, teacher_dir):
    """The policy samples its own rollouts: the log-probs its decode loop drew the tokens with are the student's
    scores, so the student is not run forward again, and the teacher gap is the one that forward would give."""
    config = on_policy_config(tmp_path, teacher_dir, "prompts_per_step=2", "group_size=3", "micro_batch_size=2",
                              "max_completion_length=12", "temperature=0.8", count=4)
    trainer = GRPOTrainer.from_config(config)
    rollouts = trainer.rollout([0, 1], step=0)
    generations = rollouts.generations
    assert all(g.logprobs is not None and len(g.logprobs) == len(g.token_ids) for g in generations)
    forwards = []
    forward = trainer.model.forward

    def counting(*args, **kwargs):
        forwards.append(1)
        return forward(*args, **kwargs)

    trainer.model.forward = counting

    def advantages(engine: bool) -> torch.Tensor:
        batch = build_train_batch(rollouts.group_prompts, [g.token_ids for g in generations], torch.zeros(6),
                                  trainer.backend.pad_id, 3,
                                  engine_logprobs=[g.logprobs for g in generations] if engine else None)
        forwards.clear()
        trainer._add_teacher_advantages(batch)
        return batch.advantages  # [6, C]: teacher_weight * (log p_teacher - log p_student) per token

    from_loop = advantages(True)
    assert forwards == []  # the student scored nothing itself
    from_forward = advantages(False)
    assert forwards  # without the loop's log-probs it runs forward
    assert from_loop.abs().sum() > 0
    torch.testing.assert_close(from_loop, from_forward, rtol=1e-4, atol=1e-5)


def test_logit_distillation_adds_the_kl_to_the_teacher(tmp_path, teacher_dir):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i} + {i} =", "completion": f"<answer>{2 * i}</answer>"}) + "\n"
                            for i in range(16)))
    config = load_config(SFTConfig, overrides=[
        "model=tiny:llama", f"teacher={teacher_dir}", "distill_alpha=0.5", f"dataset={data}", "eval_fraction=0",
        f"output_dir={tmp_path / 'run'}", "batch_size=8", "num_epochs=4", "learning_rate=3e-3",
        "prompt_template=plain", "save_steps=0"])
    trainer = SFTTrainer.from_config(config)
    trainer.fit()
    metrics = read(trainer.layout.metrics)
    assert all(m["loss"] == pytest.approx(0.5 * m["nll"] + 0.5 * m["kl"], rel=1e-5) for m in metrics)
    assert metrics[-1]["kl"] < metrics[0]["kl"]


def test_a_teacher_with_another_tokenizer_is_refused(tmp_path):
    other = tmp_path / "other"
    model, _ = load_model("tiny:qwen2")
    tokenizer = char_tokenizer()
    tokenizer.add_tokens(["<extra>"])
    model.save_pretrained(other)
    tokenizer.save_pretrained(other)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    config = load_config(SFTConfig, overrides=["model=tiny:llama", f"teacher={other}", f"dataset={data}",
                                               f"output_dir={tmp_path / 'run'}", "eval_fraction=0"])
    with pytest.raises(Exception, match="teacher: .* has another tokenizer than the student"):
        SFTTrainer.from_config(config)


def test_distill_end_to_end_resumes_without_training_again(tmp_path, teacher_dir, capsys):
    args = ["distill", f"model={teacher_dir}", "prompts=chain_sum", "num_prompts=8", "k=2", "students=[tiny:llama]",
            f"output_dir={tmp_path / 'run'}", "max_completion_length=12", "verify_with=none", "require_format=none",
            "language=null", "eval_size=4", "sft={num_epochs: 2, batch_size: 4, learning_rate: 3e-3}",
            "prompt_template=plain", "temperature=1.0"]
    assert main(args) == 0
    root = tmp_path / "run"
    assert len(read(root / "traces.jsonl")) == 16 and (root / "kept.report.json").exists()
    retention = json.loads((root / "retention.json").read_text())
    assert retention[0]["student"] == "tiny:llama" and "retention_strict_after" in retention[0]
    assert {p.name for p in (root / "eval").glob("*.jsonl")} == {"teacher.jsonl", "tiny-llama-before.jsonl",
                                                               "tiny-llama-after.jsonl"}
    metrics = (root / "students" / "tiny-llama" / "metrics.jsonl").read_text()
    assert "retention (strict)" in capsys.readouterr().err
    assert main(args) == 0  # again: nothing trained or generated twice
    assert (root / "students" / "tiny-llama" / "metrics.jsonl").read_text() == metrics
    assert len(read(root / "traces.jsonl")) == 16


def test_bad_student_settings_are_refused_before_any_work(tmp_path, capsys):
    code = main(["distill", "model=tiny:qwen2", "prompts=chain_sum", f"output_dir={tmp_path / 'run'}",
                 "sft={learning_rat: 1e-5}"])
    err = capsys.readouterr().err
    assert code == 2 and "sft: override 'learning_rat=1e-5': unknown field 'learning_rat'" in err
    assert "did you mean learning_rate" in err and not (tmp_path / "run" / "traces.jsonl").exists()
